"""Parameters of the node: declaration with descriptors, the on-set gate, the snapshot.

Every parameter of :data:`seg_ros.core.config.params.PARAMS` is declared with its description,
``read_only`` flag and range (``ros2 param describe`` shows them). Values given at start-up
are validated first (one sentence of ours, not rclpy's); later changes pass through
:class:`ParameterGate`, which validates each value and the set together, asks the frame
processor whether it can apply them, and hands a new :class:`Settings` snapshot on.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from seg_ros.core.config.params import BY_NAME, PARAMS, validate
from seg_ros.core.config.settings import Settings, SettingsError, unknown_names

_ROS_TYPES = {
    'bool': ParameterType.PARAMETER_BOOL,
    'int': ParameterType.PARAMETER_INTEGER,
    'double': ParameterType.PARAMETER_DOUBLE,
    'string': ParameterType.PARAMETER_STRING,
    'string_array': ParameterType.PARAMETER_STRING_ARRAY,
}


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, model cannot load): one clear line."""


def descriptor(spec, read_only: bool | None = None) -> ParameterDescriptor:
    """The ParameterDescriptor of a table entry (with its range, if it has one)."""
    desc = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type],
                               description=spec.description,
                               read_only=spec.read_only if read_only is None else read_only)
    if spec.int_range:
        desc.integer_range = [IntegerRange(from_value=spec.int_range[0],
                                           to_value=spec.int_range[1], step=0)]
    if spec.float_range:
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(spec.float_range[0]), to_value=float(spec.float_range[1]),
            step=0.0)]
    return desc


def declare(node: Node) -> None:
    """Declare every parameter of the table with its descriptor and a value.

    Every parameter has a value, string arrays included (an empty list), so that
    GetParameters / ``ros2 param dump`` answer for every declared name. Overrides that name
    no declared parameter are warned about with the closest declared name.

    Raises:
        StartupError: a value given at start-up is refused (the reason says why).
    """
    # The values given at start-up (--ros-args -p, params files) before declaration: rclpy
    # (Humble through Kilted) keeps them only in Node._parameter_overrides and has no public
    # getter (rclcpp's NodeOptions::parameter_overrides() has no rclpy twin); declaring
    # first would let rclpy apply a bad value before our check could name the reason.
    overrides = dict(getattr(node, '_parameter_overrides', {}) or {})
    for spec in PARAMS:
        given = overrides.get(spec.name)
        if given is not None and given.type_ != Parameter.Type.NOT_SET:
            err = validate(spec.name, given.value)
            if err:
                raise StartupError(err)
        try:
            _declare_one(node, spec)
        except Exception as exc:  # e.g. a type mismatch rclpy found first
            raise StartupError(f'{spec.name}: {_exception_reason(exc)}') from None
    for text in unknown_names(n for n in overrides if not node.has_parameter(n)):
        node.get_logger().warning(text)


def _declare_one(node: Node, spec) -> None:
    desc = descriptor(spec)
    if spec.type != 'string_array':
        node.declare_parameter(spec.name, spec.default, desc)
        return
    # rclpy infers an empty list as a byte array, so declare the type, give the empty list
    # (when nothing overrides it) while still writable, then apply the real descriptor.
    node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY,
                           descriptor(spec, read_only=False))
    if node.get_parameter_or(spec.name).type_ == Parameter.Type.NOT_SET:
        node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY,
                                       list(spec.default))])
    if spec.read_only:
        node.set_descriptor(spec.name, desc)


def _exception_reason(exc: Exception) -> str:
    """The reason in an rclpy exception, without its boilerplate and repeated name."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.split('Reason: ', 1)[-1]


def current_values(node: Node) -> dict[str, Any]:
    """The node's values of every table parameter (None when a string array is unset)."""
    out = {}
    for spec in PARAMS:
        try:
            out[spec.name] = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            out[spec.name] = None
    return out


def settings_of(node: Node) -> Settings:
    """A snapshot of the node's declared parameters.

    Raises:
        StartupError: an inconsistent set (e.g. depth.min >= depth.max).
    """
    try:
        return Settings.from_values(current_values(node))
    except SettingsError as exc:
        raise StartupError(str(exc)) from None


class ParameterGate:
    """The on-set callback: refuses a change with the reason, or accepts it and hands the
    new snapshot to ``accept``.

    Args:
        current: the snapshot in force (None before the parameters are declared).
        check: why the loaded models cannot take a snapshot (None when they can, or when
            no model is loaded).
        accept: receives the new snapshot of an accepted change.
    """

    def __init__(self, node: Node, current: Callable[[], Settings | None],
                 check: Callable[[Settings], str | None],
                 accept: Callable[[Settings], None]) -> None:
        self._current, self._check, self._accept = current, check, accept
        node.add_on_set_parameters_callback(self)

    def __call__(self, params: list[Parameter]) -> SetParametersResult:
        for prm in params:
            err = validate(prm.name, prm.value)
            if err:
                return SetParametersResult(successful=False, reason=err)
        current = self._current()
        if current is None:  # still declaring
            return SetParametersResult(successful=True)
        changes = {p.name: p.value for p in params if p.name in BY_NAME}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = current.with_changes(changes)
        except SettingsError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        err = self._check(new)
        if err:
            return SetParametersResult(successful=False, reason=err)
        self._accept(new)
        return SetParametersResult(successful=True)


def require_depth_tools(target_frame: str = '') -> None:
    """depth.enabled needs message_filters and sensor_msgs_py, and with a target frame
    tf2_ros (in every ROS distribution; here from ../shared via scripts/setup).

    Raises:
        StartupError: what is missing and how to install it.
    """
    missing = []
    for module in ('message_filters', 'sensor_msgs_py'):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise StartupError(
            f'depth.enabled needs {" and ".join(missing)} (ROS packages message_filters, '
            'sensor_msgs_py): install them from your distribution (ros-$ROS_DISTRO-message-'
            'filters, ros-$ROS_DISTRO-sensor-msgs-py), or run scripts/setup beside ../shared')
    if target_frame:
        from seg_ros.ros.transforms import require_tf2
        try:
            require_tf2()
        except ImportError as exc:
            raise StartupError(str(exc)) from None
