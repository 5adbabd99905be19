"""ament_python build of seg_ros (colcon build; ros2 run seg_ros segment_node)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'seg_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml')),
    ],
    package_data={PACKAGE: ['weights/*.pt', 'weights/*.md', 'weights/calibration/*/*.jpg']},
    include_package_data=True,
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='seg_ros maintainers',
    maintainer_email='maintainers@seg-ros.dev',
    description='Semantic and instance segmentation for ROS 2 camera streams (torchvision).',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'segment_node = seg_ros.ros.entry:segment_node',
            'segment_lifecycle_node = seg_ros.ros.entry:segment_lifecycle_node',
            'segment_bag = seg_ros.offline.segment_bag:main',
            'train_instances = seg_ros.training.train_instances:main',
            'eval_instances = seg_ros.training.eval_instances:main',
            'make_tabletop = seg_ros.training.make_tabletop:main',
            'train_camvid = seg_ros.training.train_camvid:main',
            'eval_camvid = seg_ros.training.eval_camvid:main',
        ],
    },
)
