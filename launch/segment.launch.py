"""Launch segment_node: ros2 launch seg_ros segment.launch.py image:=/camera/image_raw.

Arguments: ``image`` (input topic), ``params_file`` (default: the installed
config/segment.yaml), ``device`` (overrides the file only when given), ``namespace``,
``node_name`` (default ``segmentation``).
"""
from launch.actions import OpaqueFunction

from launch import LaunchDescription
from seg_ros.launch_support import common_arguments, segment_node


def generate_launch_description():
    return LaunchDescription([*common_arguments(), OpaqueFunction(function=segment_node)])
