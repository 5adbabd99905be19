"""Results <-> ROS messages (sensor_msgs, vision_msgs). Thin wrappers over core.imaging.

cv_bridge is not installable outside a ROS distribution, so images are converted by
:mod:`seg_ros.core.imaging` (validated, zero-copy in, one bulk copy out).
"""
from __future__ import annotations

import array
import sys
from collections.abc import Sequence

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import (
    Detection2D,
    Detection2DArray,
    LabelInfo,
    ObjectHypothesisWithPose,
    VisionClass,
)

from seg_ros.core.imaging import DEFAULT_MAX_PIXELS, Frame, buffer_to_frame
from seg_ros.core.results import InstanceResult


def stamp_ns(header: Header) -> int:
    """A header's stamp in integer nanoseconds."""
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def image_to_frame(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """Validate an Image and view its data as an array (no copy for native byte order).

    Raises:
        seg_ros.core.imaging.ImageConversionError: see ``buffer_to_frame``.
    """
    return buffer_to_frame(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                           msg.data, max_pixels)


def array_to_image(arr: np.ndarray, encoding: str, header: Header) -> Image:
    """Build an Image from an (H, W[, C]) array with one bulk copy (never per element)."""
    arr = np.ascontiguousarray(arr)
    msg = Image()
    msg.header = header
    msg.encoding = encoding
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.step = int(arr.strides[0])
    msg.is_bigendian = int(arr.itemsize > 1 and sys.byteorder == 'big')
    buf = array.array('B')
    buf.frombytes(arr.view(np.uint8).reshape(-1).data)
    msg.data = buf
    return msg


def label_info(header: Header, class_names: Sequence[str], threshold: float) -> LabelInfo:
    """LabelInfo mapping class index -> name."""
    msg = LabelInfo()
    msg.header = header
    msg.class_map = [VisionClass(class_id=i, class_name=str(n)) for i, n in
                     enumerate(class_names)]
    msg.threshold = float(threshold)
    return msg


def detections(header: Header, result: InstanceResult,
               class_names: Sequence[str]) -> Detection2DArray:
    """Detection2DArray: detection k has ``id = str(result.ids[k-1])``, the pixel value of
    its mask in the id map (k itself without tracking, its track id with tracking).

    ``class_id`` is the class name, or the decimal index when the model has no name for it;
    boxes are centre + size in input-image pixels.
    """
    out = Detection2DArray()
    out.header = header
    dets = []
    for k in range(len(result)):
        x1, y1, x2, y2 = (float(v) for v in result.boxes[k])
        cls = int(result.class_ids[k])
        d = Detection2D()
        d.header = header
        d.id = str(int(result.ids[k]))
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = str(class_names[cls]) if 0 <= cls < len(class_names) \
            else str(cls)
        hyp.hypothesis.score = float(result.scores[k])
        d.results = [hyp]
        d.bbox.center.position.x = (x1 + x2) / 2.0
        d.bbox.center.position.y = (y1 + y2) / 2.0
        d.bbox.size_x = x2 - x1
        d.bbox.size_y = y2 - y1
        dets.append(d)
    out.detections = dets
    return out
