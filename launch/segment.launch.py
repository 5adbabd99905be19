"""Launch segment_node: ros2 launch seg_ros segment.launch.py image:=/camera/image_raw."""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory('seg_ros'), 'config',
                                  'segment.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='image',
                              description='input sensor_msgs/Image topic'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='parameters YAML (see config/segment.yaml)'),
        DeclareLaunchArgument('device', default_value='auto',
                              description='auto | cpu | cuda | cuda:N'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node'),
        DeclareLaunchArgument('node_name', default_value='segmentation',
                              description='name of the node (outputs live under ~/)'),
        Node(
            package='seg_ros',
            executable='segment_node',
            name=LaunchConfiguration('node_name'),
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file'),
                        {'device': LaunchConfiguration('device')}],
            remappings=[('image', LaunchConfiguration('image'))],
            output='screen',
            emulate_tty=True,
        ),
    ])
