"""The transform of a frame into ``depth.target_frame``, at the image's stamp, from tf2.

Live: :class:`LiveTransforms` keeps a ``tf2_ros.Buffer`` filled by a ``TransformListener``
on ``/tf`` and ``/tf_static`` (the node's clock, so simulated time works) and looks up
``lookup_transform(target_frame, image frame_id, image stamp, timeout)``: tf2's
interpolation at that stamp, never the latest transform. Offline: :class:`BagTransforms`
keeps a ``tf2_py.BufferCore`` filled from the bag's ``/tf`` and ``/tf_static`` messages (no
node). Both answer a :class:`~seg_ros.core.spatial.geometry.RigidTransform` or the tf2 error.
tf2 is imported only when a target frame is set.
"""
from __future__ import annotations

from typing import Any

from seg_ros.core.spatial.geometry import GeometryError, RigidTransform


def rigid(transform_stamped: Any) -> RigidTransform:
    """A geometry_msgs TransformStamped as a :class:`RigidTransform`.

    Raises:
        GeometryError: ``no_transform`` for non-finite values or a zero quaternion.
    """
    t, q = transform_stamped.transform.translation, transform_stamped.transform.rotation
    return RigidTransform.from_quaternion((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def require_tf2() -> None:
    """Raises ImportError with the install hint when tf2 is not importable."""
    try:
        import tf2_py  # noqa: F401
        import tf2_ros  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f'depth.target_frame needs tf2_ros ({exc}): install it from your distribution '
            '(ros-$ROS_DISTRO-tf2-ros-py), or run scripts/setup beside ../shared') from None


def _lookup(lookup, target: str, source: str) -> tuple[RigidTransform | None, str]:
    if not source:
        return None, 'the image has no header.frame_id to transform from'
    try:
        return rigid(lookup()), ''
    except GeometryError as exc:
        return None, str(exc)
    except Exception as exc:  # tf2's LookupException, ExtrapolationException, ...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
        return None, f'no transform from {source} to {target}: {type(exc).__name__}: {text}'


class LiveTransforms:
    """tf2_ros Buffer + TransformListener of a node."""

    def __init__(self, node) -> None:
        import tf2_ros

        self.buffer = tf2_ros.Buffer(node=node)
        self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)

    def lookup(self, target: str, source: str, stamp_ns: int,
               timeout_s: float) -> tuple[RigidTransform | None, str]:
        """(transform, '') or (None, why) for a frame of ``source`` stamped ``stamp_ns``."""
        from rclpy.duration import Duration
        from rclpy.time import Time

        return _lookup(lambda: self.buffer.lookup_transform(
            target, source, Time(nanoseconds=stamp_ns), timeout=Duration(seconds=timeout_s)),
            target, source)

    def close(self) -> None:
        self.listener.unregister()


class BagTransforms:
    """A tf2 buffer filled from a bag's /tf and /tf_static (TFMessage) messages."""

    def __init__(self, cache_s: float = 30.0) -> None:
        import tf2_py
        from rclpy.duration import Duration

        self.core = tf2_py.BufferCore(Duration(seconds=cache_s))
        #: the newest stamp of a dynamic transform seen: how far /tf has come
        self.horizon_ns: int | None = None

    def add(self, tf_message: Any, static: bool) -> None:
        """Every transform of a tf2_msgs/TFMessage."""
        for ts in tf_message.transforms:
            if static:
                self.core.set_transform_static(ts, 'segment_bag')
            else:
                self.core.set_transform(ts, 'segment_bag')
                stamp = ts.header.stamp.sec * 10**9 + ts.header.stamp.nanosec
                self.horizon_ns = stamp if self.horizon_ns is None else max(self.horizon_ns,
                                                                            stamp)

    def lookup(self, target: str, source: str, stamp_ns: int) -> tuple[RigidTransform | None,
                                                                       str]:
        from rclpy.time import Time

        return _lookup(lambda: self.core.lookup_transform_core(
            target, source, Time(nanoseconds=stamp_ns)), target, source)
