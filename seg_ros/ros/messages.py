"""Results <-> ROS messages (sensor_msgs, vision_msgs). Thin wrappers over core.imaging.

cv_bridge is not installable outside a ROS distribution, so images are converted by
:mod:`seg_ros.core.spatial.imaging` (validated, zero-copy in, one bulk copy out).
"""
from __future__ import annotations

import array
import sys
from collections.abc import Sequence

import numpy as np
from sensor_msgs.msg import Image, PointField
from std_msgs.msg import Header
from vision_msgs.msg import (
    Detection2D,
    Detection2DArray,
    Detection3D,
    Detection3DArray,
    LabelInfo,
    ObjectHypothesisWithPose,
    VisionClass,
)
from visualization_msgs.msg import Marker, MarkerArray

from seg_ros.core.inference.results import InstanceResult
from seg_ros.core.spatial.colors import voc_palette
from seg_ros.core.spatial.geometry import InstanceGeometry, SemanticPoints
from seg_ros.core.spatial.imaging import (
    DEFAULT_MAX_PIXELS,
    Frame,
    ImageConversionError,
    buffer_to_frame,
    decode_compressed,
)
from seg_ros.core.spatial.pairing import stamp_ns, stamp_text  # noqa: F401  (re-exported)


def image_to_frame(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """Validate an Image and view its data as an array (no copy for native byte order).

    Raises:
        seg_ros.core.spatial.imaging.ImageConversionError: see ``buffer_to_frame``.
    """
    return buffer_to_frame(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                           msg.data, max_pixels)


def ingest(msg, compressed: bool, max_pixels: int = DEFAULT_MAX_PIXELS
           ) -> tuple[Frame | None, tuple[str, str] | None]:
    """A colour message (Image, or CompressedImage when ``compressed``) as a validated frame,
    or why it is dropped: ``(frame, None)`` or ``(None, (reason, warning text))``. One rule
    for the live node and segment_bag; nothing of the data is touched before its sizes,
    encoding and length pass.
    """
    try:
        frame = (decode_compressed(msg.format, msg.data, max_pixels) if compressed
                 else image_to_frame(msg, max_pixels))
    except ImageConversionError as exc:
        return None, (exc.reason, f'dropped frame at {stamp_text(msg.header)}: {exc}')
    return frame, None


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


def _hypothesis(class_names: Sequence[str], cls: int, score: float) -> ObjectHypothesisWithPose:
    """A class (its name, or the decimal index without one) and its score."""
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id = str(class_names[cls]) if 0 <= cls < len(class_names) \
        else str(cls)
    hyp.hypothesis.score = float(score)
    return hyp


def _hypotheses(result: InstanceResult, k: int,
                class_names: Sequence[str]) -> list[ObjectHypothesisWithPose]:
    """Instance k's class and score first, then the other classes the model gave the same
    object (merged duplicates), best first.
    """
    rows = [(int(result.class_ids[k]), float(result.scores[k])), *result.alternatives[k]]
    return [_hypothesis(class_names, c, s) for c, s in rows]


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
        d = Detection2D()
        d.header = header
        d.id = str(int(result.ids[k]))
        d.results = _hypotheses(result, k, class_names)
        d.bbox.center.position.x = (x1 + x2) / 2.0
        d.bbox.center.position.y = (y1 + y2) / 2.0
        d.bbox.size_x = x2 - x1
        d.bbox.size_y = y2 - y1
        dets.append(d)
    out.detections = dets
    return out


# -- 3D -------------------------------------------------------------------------------------
# PointCloud2 layouts: little padding, 4-byte aligned points (what RViz and PCL read).
INSTANCE_CLOUD_FIELDS = (('x', 0, 'float32'), ('y', 4, 'float32'), ('z', 8, 'float32'),
                         ('id', 12, 'uint16'))
INSTANCE_CLOUD_STEP = 16
SEMANTIC_CLOUD_FIELDS = (('x', 0, 'float32'), ('y', 4, 'float32'), ('z', 8, 'float32'),
                         ('label', 12, 'uint16'), ('rgb', 16, 'float32'))
SEMANTIC_CLOUD_STEP = 20


def _cloud(header: Header, layout, step: int, columns: dict[str, np.ndarray]):
    """An unorganised PointCloud2 built by sensor_msgs_py from a structured array."""
    from sensor_msgs_py import point_cloud2  # checked at start-up when depth is on

    types = {'float32': PointField.FLOAT32, 'uint16': PointField.UINT16}
    fields = [PointField(name=n, offset=o, datatype=types[t], count=1) for n, o, t in layout]
    dtype = point_cloud2.dtype_from_fields(fields, point_step=step)
    n = next(iter(columns.values())).shape[0]
    points = np.zeros(n, dtype)
    for name, values in columns.items():
        points[name] = values
    return point_cloud2.create_cloud(header, fields, points, point_step=step)


def instance_cloud(header: Header, geom: InstanceGeometry):
    """~/instances/points: x, y, z (float32, m) and id (uint16, the 2D id) per point."""
    pts = geom.points
    return _cloud(header, INSTANCE_CLOUD_FIELDS, INSTANCE_CLOUD_STEP,
                  {'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'id': geom.point_ids})


def semantic_cloud(header: Header, sp: SemanticPoints):
    """~/semantic/points: x, y, z (float32), label (uint16), rgb (float32-packed 0x00RRGGBB,
    as PCL and RViz read it).
    """
    pts = sp.points
    return _cloud(header, SEMANTIC_CLOUD_FIELDS, SEMANTIC_CLOUD_STEP,
                  {'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'label': sp.labels,
                   'rgb': sp.rgb.astype(np.uint32).view(np.float32)})


def detections_3d(header: Header, result: InstanceResult, geom: InstanceGeometry,
                  class_names: Sequence[str], min_points: int) -> Detection3DArray:
    """Detection3DArray: one Detection3D per 2D detection with >= ``min_points`` valid
    points, same ``id`` and hypothesis; pose position = per-axis median, bbox = 2nd..98th
    percentile box (centre + size), orientation identity.
    """
    out = Detection3DArray()
    out.header = header
    dets = []
    for k in range(len(result)):
        if int(geom.counts[k]) < min_points:
            continue
        d = Detection3D()
        d.header = header
        d.id = str(int(result.ids[k]))
        px, py, pz = (float(v) for v in geom.position[k])
        d.results = _hypotheses(result, k, class_names)
        for hyp in d.results:
            hyp.pose.pose.position.x, hyp.pose.pose.position.y = px, py
            hyp.pose.pose.position.z = pz
            hyp.pose.pose.orientation.w = 1.0
        lo, hi = geom.box_min[k], geom.box_max[k]
        d.bbox.center.position.x = float(lo[0] + hi[0]) / 2.0
        d.bbox.center.position.y = float(lo[1] + hi[1]) / 2.0
        d.bbox.center.position.z = float(lo[2] + hi[2]) / 2.0
        d.bbox.center.orientation.w = 1.0
        d.bbox.size.x = float(hi[0] - lo[0])
        d.bbox.size.y = float(hi[1] - lo[1])
        d.bbox.size.z = float(hi[2] - lo[2])
        dets.append(d)
    out.detections = dets
    return out


_MARKER_COLORS = voc_palette(256)


def markers(header: Header, dets3d: Detection3DArray) -> MarkerArray:
    """MarkerArray for RViz: DELETEALL, then a box and a text label per Detection3D."""
    palette = _MARKER_COLORS
    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    out = [clear]
    for d in dets3d.detections:
        ident = int(d.id)
        r, g, b = (float(c) / 255.0 for c in palette[ident % 255 + 1])
        box = Marker()
        box.header = header
        box.ns, box.id, box.type, box.action = 'boxes', ident, Marker.CUBE, Marker.ADD
        box.pose = d.bbox.center
        box.scale.x = max(d.bbox.size.x, 1e-3)
        box.scale.y = max(d.bbox.size.y, 1e-3)
        box.scale.z = max(d.bbox.size.z, 1e-3)
        box.color.r, box.color.g, box.color.b, box.color.a = r, g, b, 0.4
        text = Marker()
        text.header = header
        text.ns, text.id, text.type = 'labels', ident, Marker.TEXT_VIEW_FACING
        text.action = Marker.ADD
        text.pose.position.x = d.bbox.center.position.x
        # above the box (optical frame: y points down)
        text.pose.position.y = d.bbox.center.position.y - d.bbox.size.y / 2.0 - 0.02
        text.pose.position.z = d.bbox.center.position.z
        text.pose.orientation.w = 1.0
        text.scale.z = 0.04
        text.color.r = text.color.g = text.color.b = text.color.a = 1.0
        hyp = d.results[0].hypothesis
        text.text = f'{d.id}:{hyp.class_id} {hyp.score:.2f}'
        out.append(box)
        out.append(text)
    arr = MarkerArray()
    arr.markers = out
    return arr
