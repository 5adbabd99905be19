r"""Launch one segment_node for several cameras (one model, batched forward passes).

    ros2 launch seg_ros multi_camera.launch.py cameras:=front,left,right,rear \\
        images:=/car/front/image_raw,/car/left/image_raw,/car/right/image_raw,/car/rear/image_raw

Arguments: ``cameras`` (comma-separated names, default ``front,left,right,rear``; the
node's ``cameras`` parameter), ``images`` (comma-separated input topics, one per camera;
empty: ``<cam>/image`` in the node's namespace), ``depths`` and ``camera_infos`` (optional,
one per camera: turn ``depth.enabled`` on), ``max_batch`` (empty: the number of cameras),
``params_file``, ``device``, ``namespace``, ``node_name`` (default ``segmentation``).
Outputs: ``~/<cam>/semantic/labels``, ``~/<cam>/instances/detections``, ... per camera;
``~/semantic/label_info`` shared.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction

from launch import LaunchDescription
from seg_ros.launch_support import common_arguments, multi_camera_node


def generate_launch_description():
    return LaunchDescription([
        *[a for a in common_arguments() if a.name != 'image'],
        DeclareLaunchArgument('cameras', default_value='front,left,right,rear',
                              description='comma-separated camera names (ROS name tokens)'),
        DeclareLaunchArgument('images', default_value='',
                              description='comma-separated image topics, one per camera '
                                          '(empty: <cam>/image)'),
        DeclareLaunchArgument('depths', default_value='',
                              description='comma-separated registered depth topics, one per '
                                          'camera (turns depth.enabled on)'),
        DeclareLaunchArgument('camera_infos', default_value='',
                              description='comma-separated camera_info topics, one per camera'),
        DeclareLaunchArgument('max_batch', default_value='',
                              description='frames per forward pass (empty: the number of '
                                          'cameras)'),
        OpaqueFunction(function=multi_camera_node),
    ])
