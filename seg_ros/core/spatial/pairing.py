"""Depth and camera_info for a colour frame: one rule for the live node and for bags.

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
from typing import Any

from seg_ros.core.inference.processor import CameraModel, DepthInput
from seg_ros.core.spatial import geometry
from seg_ros.core.spatial.geometry import GeometryError
from seg_ros.core.spatial.imaging import DEFAULT_MAX_PIXELS
from seg_ros.ros.messages import stamp_ns

#: depth images kept per camera (1 s at 30 Hz)
DEPTH_CACHE = 30


def stamp_text(header: Any) -> str:
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
    """The validated depth images and camera_info of one camera (see the module)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS,
                 capacity: int = DEPTH_CACHE) -> None:
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
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

    def camera_model(self) -> CameraModel | None:
        """The newest valid camera_info."""
        with self._lock:
            return self._model

    def pair(self, stamp: int, slop_s: float) -> tuple[DepthInput | None, CameraModel | None]:
        """(depth, camera model) for a colour frame stamped ``stamp``."""
        return self.depth(stamp, slop_s), self.camera_model()
