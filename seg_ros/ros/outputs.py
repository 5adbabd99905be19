"""A frame's results -> the node's output messages, as (topic, message) pairs.

The live node publishes them and ``segment_bag`` serialises them: one builder, so a bag's
outputs are the live node's byte for byte. Topics are relative to the node's private
namespace and to the camera (``semantic/labels``; the caller adds ``~/``, the camera's
prefix or ``/segmentation/``). No rclpy node here, only message types.
"""
from __future__ import annotations

from typing import Any

from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from seg_ros.core.config.settings import Settings
from seg_ros.core.inference.pipeline import Pipeline
from seg_ros.core.inference.processor import FrameOutput
from seg_ros.ros import messages

# -- the topic names, relative to the node's private namespace and the camera's prefix ------
#: inputs, relative to the node's namespace and the camera's prefix (``front/image``)
IMAGE, DEPTH, CAMERA_INFO = 'image', 'depth', 'camera_info'
SEMANTIC_LABELS, SEMANTIC_COLOR = 'semantic/labels', 'semantic/color'
SEMANTIC_LABEL_INFO, SEMANTIC_POINTS = 'semantic/label_info', 'semantic/points'
DETECTIONS, MASKS, OVERLAY = 'instances/detections', 'instances/masks', 'instances/overlay'
INSTANCE_LABEL_INFO = 'instances/label_info'
DETECTIONS_3D, INSTANCE_POINTS = 'instances/detections_3d', 'instances/points'
MARKERS = 'instances/markers'
LATENCY, TIMING = 'latency', 'timing'
#: the node's default name: segment_bag writes its outputs under /segmentation/
NODE_NAME = 'segmentation'

FASTDDS_SHM_SEGMENT = 512 * 1024  # Fast DDS's default shared-memory segment (bytes)
LATENCY_LABELS = 'processing_s,stamp_to_publish_s'
TIMING_LABELS = 'stamp_s,forward_s,processing_s'


def output_topics(semantic: bool, instance: bool, depth: bool) -> list[tuple[type, str]]:
    """Every per-camera output (message type, relative topic) of a node with these models
    (label_info, latched and shared by the cameras, is not among them).
    """
    out: list[tuple[type, str]] = []
    if semantic:
        out += [(Image, SEMANTIC_LABELS), (Image, SEMANTIC_COLOR)]
    if instance:
        out += [(Detection2DArray, DETECTIONS), (Image, MASKS), (Image, OVERLAY)]
    if depth and instance:
        out += [(Detection3DArray, DETECTIONS_3D), (PointCloud2, INSTANCE_POINTS),
                (MarkerArray, MARKERS)]
    if depth and semantic:
        out += [(PointCloud2, SEMANTIC_POINTS)]
    return out + [(Float64MultiArray, LATENCY), (Float64MultiArray, TIMING)]


class Outputs:
    """Message builder of one set of loaded models."""

    def __init__(self, pipeline: Pipeline) -> None:
        sem, inst = pipeline.semantic, pipeline.instance
        self.label_encoding = sem.label_encoding if sem is not None else 'mono8'
        self.semantic_names = list(sem.loaded.class_names) if sem is not None else None
        self.instance_names = list(inst.loaded.class_names) if inst is not None else None

    def label_infos(self, header: Header, settings: Settings) -> list[tuple[str, Any]]:
        """The latched class maps (``semantic/label_info``, ``instances/label_info``)."""
        out = []
        if self.semantic_names is not None:
            out.append((SEMANTIC_LABEL_INFO,
                        messages.label_info(header, self.semantic_names, 0.0)))
        if self.instance_names is not None:
            out.append((INSTANCE_LABEL_INFO, messages.label_info(
                header, self.instance_names, settings.score_threshold)))
        return out

    def frame(self, header: Header, out: FrameOutput, settings: Settings,
              want_markers: bool = False) -> list[tuple[str, Any]]:
        """Every message of a frame, in publishing order: the 2D ones, then with
        ``depth.enabled`` the 3D ones (markers only when ``want_markers``).
        """
        msgs = self.frame_2d(header, out)
        if settings.depth_enabled:
            msgs += self.frame_3d(header, out, settings, want_markers)
        return msgs

    def frame_2d(self, header: Header, out: FrameOutput) -> list[tuple[str, Any]]:
        """The 2D messages of a frame, in publishing order (colour and overlay only when the
        result has them).
        """
        res = out.result
        msgs: list[tuple[str, Any]] = []
        if res is None:
            return msgs
        if res.semantic is not None:
            msgs.append((SEMANTIC_LABELS, messages.array_to_image(
                res.semantic.labels, self.label_encoding, header)))
            if res.semantic.color is not None:
                msgs.append((SEMANTIC_COLOR, messages.array_to_image(
                    res.semantic.color, 'rgb8', header)))
        if res.instances is not None:
            msgs.append((DETECTIONS, messages.detections(
                header, res.instances, self.instance_names)))
            msgs.append((MASKS, messages.array_to_image(
                res.instances.id_map, 'mono16', header)))
            if res.instances.overlay is not None:
                msgs.append((OVERLAY, messages.array_to_image(
                    res.instances.overlay, 'rgb8', header)))
        return msgs

    def frame_3d(self, header: Header, out: FrameOutput, settings: Settings,
                 want_markers: bool = False) -> list[tuple[str, Any]]:
        """The 3D messages of a frame (none when its geometry could not be made), with the
        image's header, or with ``depth.target_frame`` as frame_id when one is set.
        """
        geo, res = out.geometry, out.result
        msgs: list[tuple[str, Any]] = []
        if geo is None or res is None:
            return msgs
        if settings.target_frame:  # the image's stamp, the frame the points are in
            header = Header(stamp=header.stamp, frame_id=settings.target_frame)
        if geo.instances is not None:
            dets = messages.detections_3d(header, res.instances, geo.instances,
                                          self.instance_names, settings.depth_min_points)
            msgs.append((DETECTIONS_3D, dets))
            msgs.append((INSTANCE_POINTS, messages.instance_cloud(header, geo.instances)))
            if want_markers:
                msgs.append((MARKERS, messages.markers(header, dets)))
        if geo.semantic is not None:
            msgs.append((SEMANTIC_POINTS, messages.semantic_cloud(header, geo.semantic)))
        return msgs


def latency_msg(processing_s: float, age_s: float) -> Float64MultiArray:
    """``~/latency``: [processing_s, stamp_to_publish_s]."""
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=LATENCY_LABELS, size=2, stride=2)]
    msg.data = [float(processing_s), float(age_s)]
    return msg


def timing_msg(stamp_s: float, forward_s: float, processing_s: float) -> Float64MultiArray:
    """``~/timing``: [stamp_s, forward_s, processing_s]."""
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=TIMING_LABELS, size=3, stride=3)]
    msg.data = [float(stamp_s), float(forward_s), float(processing_s)]
    return msg


def large_data_hint(nbytes: int) -> str | None:
    """The one-time hint for an output over Fast DDS's shared-memory segment, when the
    LARGE_DATA transports are not set (such messages travel as UDP fragments that default
    socket buffers drop).
    """
    import os
    if nbytes <= FASTDDS_SHM_SEGMENT or os.environ.get('FASTDDS_BUILTIN_TRANSPORTS'):
        return None
    return (f'hint: an output image is {nbytes / 1024:.0f} KB, above Fast DDS\'s 512 KB '
            'shared-memory segment; with the default transports such messages travel as UDP '
            'fragments that default socket buffers drop (late or lost frames). Set '
            'FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in every process (camera driver, this node, '
            'every consumer), or raise net.core.rmem_max / rmem_default '
            '(docs/backends_performance.md: Large images and DDS)')
