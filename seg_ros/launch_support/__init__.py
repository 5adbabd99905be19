"""What seg_ros' launch files share: the launch arguments every one declares and the
segment_node action they build (a launch argument overrides the params file only when the
user gave it).
"""
from __future__ import annotations

import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

_BOOL = {'true': True, 'false': False}


def common_arguments(node_name: str = 'segmentation') -> list[DeclareLaunchArgument]:
    """``image``, ``params_file``, ``device``, ``namespace``, ``node_name``."""
    default_params = os.path.join(get_package_share_directory('seg_ros'), 'config',
                                  'segment.yaml')
    return [
        DeclareLaunchArgument('image', default_value='image',
                              description='input sensor_msgs/Image topic'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='parameters YAML (see config/segment.yaml)'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto | cpu | cuda | cuda:N; empty (default) keeps '
                                          "the params file's value (auto when it has none)"),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node'),
        DeclareLaunchArgument('node_name', default_value=node_name,
                              description='name of the node (outputs live under ~/)'),
        DeclareLaunchArgument('instance_weights', default_value='',
                              description='instance.weights: tabletop (shipped: boxes and '
                                          'cylinders on a table; works offline) | DEFAULT '
                                          '(torchvision COCO, downloads ~180 MB once) | a '
                                          'weights file (a train_instances file brings its '
                                          "model and classes) | none; empty (default) keeps "
                                          "the params file's value"),
        DeclareLaunchArgument('instance_model', default_value='',
                              description="instance.model; empty keeps the params file's "
                                          "(whose default '' takes the weights file's)"),
        DeclareLaunchArgument('warmup_size', default_value='',
                              description='warmup_size: WIDTHxHEIGHT the camera sends (the '
                                          'first frame then pays no export); empty keeps '
                                          "the params file's"),
    ]


#: launch argument -> parameter, for string arguments every launch file takes (empty = the
#: params file's value)
STRING_ARGS = {'instance.weights': 'instance_weights', 'instance.model': 'instance_model',
               'warmup_size': 'warmup_size'}


def _names(context, arg: str) -> list[str]:
    """A comma-separated launch argument as a list (blanks dropped)."""
    return [v.strip() for v in LaunchConfiguration(arg).perform(context).split(',')
            if v.strip()]


def multi_camera_node(context) -> list[Node]:
    """segment_node with ``cameras`` from the comma-separated ``cameras`` argument, each
    camera's ``<cam>/image`` remapped to the matching entry of ``images`` (and, when given,
    ``<cam>/depth`` / ``<cam>/camera_info`` to ``depths`` / ``camera_infos``, which turns
    depth on).

    Raises:
        ValueError: no camera, or a topic list whose length is not the cameras'.
    """
    cameras = _names(context, 'cameras')
    if not cameras:
        raise ValueError('launch argument cameras: give at least one camera name')
    remaps: list[tuple[str, str]] = []
    for arg, input_name in (('images', 'image'), ('depths', 'depth'),
                            ('camera_infos', 'camera_info')):
        topics = _names(context, arg)
        if topics and len(topics) != len(cameras):
            raise ValueError(f'launch argument {arg}: {len(topics)} topics for '
                             f'{len(cameras)} cameras {cameras}')
        remaps += [(f'{cam}/{input_name}', t) for cam, t in zip(cameras, topics, strict=False)]
    fixed: dict = {'cameras': cameras}
    batch = LaunchConfiguration('max_batch').perform(context).strip()
    if batch:
        fixed['max_batch'] = int(batch)
    if _names(context, 'depths'):
        fixed['depth.enabled'] = True
    return segment_node(context, remaps=(), fixed=fixed, extra_remaps=remaps)


def segment_node(context, remaps: tuple[str, ...] = ('image',), fixed: dict | None = None,
                 bool_args: dict[str, str] | None = None,
                 extra_remaps: list[tuple[str, str]] | None = None,
                 string_args: dict[str, str] | None = None) -> list[Node]:
    """The segment_node action.

    Args:
        remaps: launch arguments that are also topic names to remap (``image`` -> its value).
        fixed: parameters this launch file always sets (after the params file).
        bool_args: parameter name -> launch argument ('true'/'false'; empty = keep the file's).
        extra_remaps: further (from, to) topic remappings.
        string_args: parameter name -> launch argument (a string; empty = keep the file's),
            besides :data:`STRING_ARGS`.

    Raises:
        ValueError: a boolean argument that is neither true nor false.
    """
    overrides = dict(fixed or {})
    device = LaunchConfiguration('device').perform(context).strip()
    if device:
        overrides['device'] = device
    for param, arg in (bool_args or {}).items():
        value = LaunchConfiguration(arg).perform(context).strip().lower()
        if value:
            if value not in _BOOL:
                raise ValueError(f'launch argument {arg}:={value}: expected true or false')
            overrides[param] = _BOOL[value]
    for param, arg in {**STRING_ARGS, **(string_args or {})}.items():
        value = LaunchConfiguration(arg).perform(context).strip()
        if value:
            overrides[param] = value
    parameters = [LaunchConfiguration('params_file')]
    if overrides:
        parameters.append(overrides)
    return [Node(
        package='seg_ros',
        executable='segment_node',
        name=LaunchConfiguration('node_name'),
        namespace=LaunchConfiguration('namespace'),
        parameters=parameters,
        remappings=[(topic, LaunchConfiguration(topic)) for topic in remaps]
        + list(extra_remaps or []),
        output='screen',
        # colours only on a terminal: launch output piped to a file stays plain text
        emulate_tty=sys.stdout.isatty(),
    )]
