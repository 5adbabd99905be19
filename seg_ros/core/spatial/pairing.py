"""Depth and camera_info for a colour frame: one rule for the live node and for bags.

The processor is given each frame's :class:`Pairing` and pairs the frame itself, before
inference and again after it (a depth image or camera_info that arrived meanwhile), and
looks the transform into ``depth.target_frame`` up through the :class:`Transforms` object it
is given (tf2's buffer live, the bag's /tf offline): no callback into the ROS layer.

Only validated messages are kept: a depth image enters the cache when its encoding, size,
step and data pass :func:`seg_ros.core.spatial.geometry.depth_array`; a camera_info when its
intrinsics are usable. A colour frame takes the cached depth whose stamp is nearest to its
own within ``depth.slop`` (ties: the one received first) and the newest valid camera_info.
The cache is bounded (the last ``capacity`` depth images, as message_filters.Cache keeps
them), so memory never grows with the stream. Thread-safe (the executor adds, the inference
thread looks up). Works on any object with the fields of sensor_msgs Image / CameraInfo; no
rclpy.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from seg_ros.core.spatial import geometry
from seg_ros.core.spatial.geometry import GeometryError, RigidTransform
from seg_ros.core.spatial.imaging import DEFAULT_MAX_PIXELS

#: depth images kept per camera (1 s at 30 Hz)
DEPTH_CACHE = 30


@dataclass(frozen=True)
class DepthInput:
    """A validated depth image registered to the colour frame.

    Attributes:
        depth: (h, w) uint16 or float32, as received; ``scale`` metres per unit.
        stamp_ns: its image stamp.
    """

    depth: np.ndarray
    scale: float
    stamp_ns: int = 0


@dataclass(frozen=True)
class CameraModel:
    """The colour camera's calibration, as sensor_msgs/CameraInfo carries it (k: 9 values,
    p: 12 values; width/height 0 = not stated).
    """

    k: tuple[float, ...]
    p: tuple[float, ...]
    width: int = 0
    height: int = 0


@dataclass
class Paired:
    """What a frame was paired with for its 3D: depth, camera model and, with
    ``depth.target_frame``, the transform into that frame at the frame's stamp
    (``transform_error``: why there is none).
    """

    depth: DepthInput | None = None
    camera_model: CameraModel | None = None
    transform: RigidTransform | None = None
    transform_error: str = ''


class Transforms(Protocol):
    """Where transforms come from: tf2's buffer (live) or a bag's /tf (offline)."""

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float
               ) -> tuple[RigidTransform | None, str]:
        """The transform from ``source`` into ``target`` at ``stamp_ns``, or (None, why)."""
        ...


def stamp_ns(header: Any) -> int:
    """A header's stamp in integer nanoseconds."""
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def stamp_text(header: Any) -> str:
    """A header's stamp as ``sec.nanosec`` for log lines."""
    return f'{header.stamp.sec}.{header.stamp.nanosec:09d}'


def check_depth(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> DepthInput:
    """A depth Image as a :class:`DepthInput` (a view of its data, no copy).

    Raises:
        GeometryError: ``bad_depth`` with the reason (negative stamp, encoding, size, step,
            data length, or a message that is not an Image at all).
    """
    try:
        if msg.header.stamp.sec < 0:
            raise GeometryError('bad_depth', 'depth stamp is negative')
        depth, scale = geometry.depth_array(msg.encoding, msg.height, msg.width, msg.step,
                                            msg.is_bigendian, msg.data, max_pixels)
        return DepthInput(depth, scale, stamp_ns(msg.header))
    except GeometryError:
        raise
    except Exception as exc:  # a malformed message of an unexpected kind
        raise GeometryError('bad_depth', f'malformed depth message: {type(exc).__name__}: '
                            f'{str(exc)[:200]}') from None


def check_camera_info(msg: Any) -> CameraModel:
    """A CameraInfo as a :class:`CameraModel` once its intrinsics are usable.

    Raises:
        GeometryError: ``bad_camera_info`` with the reason.
    """
    try:
        if msg.header.stamp.sec < 0:
            raise GeometryError('bad_camera_info', 'camera_info stamp is negative')
        geometry.intrinsics_from(msg.k, msg.p)
        return CameraModel(tuple(float(v) for v in msg.k), tuple(float(v) for v in msg.p),
                           int(msg.width), int(msg.height))
    except GeometryError:
        raise
    except Exception as exc:
        raise GeometryError('bad_camera_info', f'malformed camera_info: '
                            f'{type(exc).__name__}: {str(exc)[:200]}') from None


class Pairing:
    """The validated depth images and camera_info of one camera (see the module).

    ``depth_topic`` / ``info_topic`` name where they come from, for the drop reasons.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS,
                 capacity: int = DEPTH_CACHE, depth_topic: str = '',
                 info_topic: str = '') -> None:
        self.max_pixels = max_pixels
        self.depth_topic, self.info_topic = depth_topic, info_topic
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._depths: deque[DepthInput] = deque(maxlen=capacity)
        self._model: CameraModel | None = None

    def add_depth(self, msg: Any) -> GeometryError | None:
        """Keep a depth image if it is valid; else return why it was refused."""
        try:
            depth = check_depth(msg, self.max_pixels)
        except GeometryError as exc:
            return exc
        with self._lock:
            self._depths.append(depth)
            self._arrived.notify_all()
        return None

    def add_camera_info(self, msg: Any) -> GeometryError | None:
        """Keep a camera_info if it is valid; else return why it was refused."""
        try:
            model = check_camera_info(msg)
        except GeometryError as exc:
            return exc
        with self._lock:
            self._model = model
        return None

    def depth(self, stamp: int, slop_s: float) -> DepthInput | None:
        """The cached depth nearest in stamp to ``stamp`` (ns) within ``slop_s``."""
        slop = int(round(slop_s * 1e9))
        with self._lock:
            near = [d for d in self._depths if abs(d.stamp_ns - stamp) <= slop]
        return min(near, key=lambda d: abs(d.stamp_ns - stamp)) if near else None

    def wait_depth(self, stamp: int, slop_s: float, timeout_s: float) -> DepthInput | None:
        """:meth:`depth`, waiting up to ``timeout_s`` for it to arrive (woken by
        :meth:`add_depth`, no polling): for a model that needs the frame's depth.
        """
        slop = int(round(slop_s * 1e9))

        def near() -> list[DepthInput]:
            return [d for d in self._depths if abs(d.stamp_ns - stamp) <= slop]
        with self._lock:
            self._arrived.wait_for(lambda: bool(near()), timeout=max(0.0, timeout_s))
            found = near()
        return min(found, key=lambda d: abs(d.stamp_ns - stamp)) if found else None

    def camera_model(self) -> CameraModel | None:
        """The newest valid camera_info."""
        with self._lock:
            return self._model

    def pair(self, stamp: int, slop_s: float) -> tuple[DepthInput | None, CameraModel | None]:
        """(depth, camera model) for a colour frame stamped ``stamp``."""
        return self.depth(stamp, slop_s), self.camera_model()

    def complete(self, got: Paired, stamp: int, slop_s: float) -> Paired:
        """``got`` with its missing depth or camera model taken from the cache now."""
        if got.depth is not None and got.camera_model is not None:
            return got
        depth, model = self.pair(stamp, slop_s)
        return Paired(got.depth or depth, got.camera_model or model, got.transform,
                      got.transform_error)
