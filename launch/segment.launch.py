"""Launch segment_node: ros2 launch seg_ros segment.launch.py image:=/camera/image_raw.

Arguments: ``image`` (input topic), ``params_file`` (default: the installed
config/segment.yaml), ``device`` (overrides the file only when given), ``namespace``,
``node_name`` (default ``segmentation``).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def _node(context):
    # A launch argument overrides the params file only when the user gave it: an empty
    # default keeps the file's (or the node's) own value.
    overrides = {}
    device = LaunchConfiguration('device').perform(context).strip()
    if device:
        overrides['device'] = device
    parameters = [LaunchConfiguration('params_file')]
    if overrides:
        parameters.append(overrides)
    return [Node(
        package='seg_ros',
        executable='segment_node',
        name=LaunchConfiguration('node_name'),
        namespace=LaunchConfiguration('namespace'),
        parameters=parameters,
        remappings=[('image', LaunchConfiguration('image'))],
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory('seg_ros'), 'config',
                                  'segment.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='image',
                              description='input sensor_msgs/Image topic'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='parameters YAML (see config/segment.yaml)'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto | cpu | cuda | cuda:N; empty (default) keeps '
                                          "the params file's value (auto when it has none)"),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node'),
        DeclareLaunchArgument('node_name', default_value='segmentation',
                              description='name of the node (outputs live under ~/)'),
        OpaqueFunction(function=_node),
    ])
