"""Launch segment_node for a pick-and-place RGB-D rig: instances and 3D from depth on.

    ros2 launch seg_ros pick_and_place.launch.py image:=/camera/color/image_raw \
        depth:=/camera/aligned_depth_to_color/image_raw \
        camera_info:=/camera/color/camera_info

Arguments: ``image``, ``depth`` (registered to the colour image), ``camera_info`` (of the
colour image), ``params_file`` (default: the installed config/segment.yaml), ``device``,
``namespace``, ``node_name`` (default ``segmentation``), ``tracking`` (default true: ids
that persist while the arm occludes objects), ``semantic`` (default false: a tabletop
rarely needs per-pixel classes), ``target_frame`` (default empty: 3D in the colour
image's frame; e.g. ``base_link``: every 3D output in that frame through tf2, at the image's
stamp), ``instance_weights`` / ``instance_model`` (empty: the params file's; docs/3d_and_tf.md:
"Pick-and-place offline"). ``instance.enabled`` and ``depth.enabled`` are always on.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction

from launch import LaunchDescription
from seg_ros.launch_support import common_arguments, segment_node


def _node(context):
    return segment_node(context, remaps=('image', 'depth', 'camera_info'),
                        fixed={'instance.enabled': True, 'depth.enabled': True},
                        bool_args={'instance.tracking': 'tracking',
                                   'semantic.enabled': 'semantic'},
                        string_args={'depth.target_frame': 'target_frame'})


def generate_launch_description():
    return LaunchDescription([
        *common_arguments(),
        DeclareLaunchArgument('depth', default_value='depth',
                              description='depth sensor_msgs/Image registered to the colour '
                                          'image (16UC1 mm or 32FC1 m)'),
        DeclareLaunchArgument('camera_info', default_value='camera_info',
                              description='sensor_msgs/CameraInfo of the colour image'),
        DeclareLaunchArgument('tracking', default_value='true',
                              description='instance.tracking: true | false'),
        DeclareLaunchArgument('semantic', default_value='false',
                              description='semantic.enabled: true | false'),
        DeclareLaunchArgument('target_frame', default_value='',
                              description='depth.target_frame: frame of the 3D outputs (e.g. '
                                          "base_link); empty keeps the params file's (the "
                                          "image's own frame)"),
        OpaqueFunction(function=_node),
    ])
