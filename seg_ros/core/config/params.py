"""Parameter table of segment_node: names, defaults, descriptors and validation. No rclpy.

One table drives declaration (with descriptors), validation (in the on-set callback) and
the documentation in ``config/segment.yaml``. Validators return an error string or None.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from seg_ros.core.config.names import (
    BACKENDS,
    DEFAULT_CACHE_DIR,
    DEFAULT_INSTANCE_MODEL,
    DEPTH_OBJECTS,
    INSTANCE_MODEL_NAMES,
    SEMANTIC_MODEL_NAMES,
    SHIPPED_SEMANTIC,
)

_DEVICE = re.compile(r'^(auto|cpu|cuda|cuda:\d+)$')
_SIZES = re.compile(r'^[1-9]\d{0,4}x[1-9]\d{0,4}(,[1-9]\d{0,4}x[1-9]\d{0,4})*$')


@dataclass(frozen=True)
class Param:
    """One parameter: default value, ROS type name, doc, validation.

    String arrays default to ``()``: declared as an empty list, which is a value that
    GetParameters returns (an unset parameter would answer nothing).
    """

    name: str
    default: Any
    type: str  # 'bool' | 'int' | 'double' | 'string' | 'string_array'
    description: str
    read_only: bool = True
    check: Callable[[Any], str | None] | None = None
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f'must be one of {list(choices)}, got {v!r}'
    return check


def _calibration_dir(v: Any) -> str | None:
    if not isinstance(v, str):
        return f'must be a folder path or empty, got {v!r}'
    if v and not os.path.isdir(os.path.expanduser(v)):
        return f'{v!r} is not a folder'
    return None


def _weights(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return f'must be DEFAULT, none, {"/".join(SHIPPED_SEMANTIC)} or a file path, got {v!r}'
    return None


def _classes(v: Any) -> str | None:
    if any(not isinstance(c, str) for c in (v or [])):
        return 'must be a list of class names'
    return None


_TOKEN = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


def _cameras(v: Any) -> str | None:
    if any(not isinstance(c, str) for c in (v or [])):
        return 'must be a list of camera names'
    given = [c for c in v or [] if c]
    bad = [c for c in given if not _TOKEN.match(c) or '__' in c or c.endswith('_')]
    if bad:
        return (f'camera names must be ROS name tokens (a letter, then letters, digits and '
                f'single underscores, not ending in one): {bad}')
    dup = sorted({c for c in given if given.count(c) > 1})
    if dup:
        return f'camera names must be distinct: {dup} given more than once'
    return None


def names(value: Any) -> list[str]:
    """A string-array parameter as a list, empty strings dropped ([''] = none given)."""
    return [str(c) for c in (value or []) if str(c)]


PARAMS: list[Param] = [
    Param('device', 'auto', 'string', 'auto | cpu | cuda | cuda:N (auto picks CUDA when present)',
          check=lambda v: None if _DEVICE.match(str(v)) else
          f'must be auto, cpu, cuda or cuda:N, got {v!r}'),
    Param('precision', 'fp32', 'string', 'fp32 | fp16 | bf16 | int8, by each backend\'s own '
          'mechanism: torch autocast on CUDA (torch on the CPU runs fp32 and warns once), '
          'OpenVINO\'s inference precision hint (bf16 on CPUs with BF16), ONNX Runtime fp32 '
          'on the CPU (warns); int8: static post-training quantization of the compiled graph '
          '(NNCF for openvino, onnxruntime.quantization for onnxruntime; the semantic model and '
          'the instance trunk), built during warm-up for the warmup_size sizes and cached; '
          'torch runs fp32 and warns', check=_one_of('fp32', 'fp16', 'bf16', 'int8')),
    Param('int8.calibration_dir', '', 'string',
          'precision int8: a folder of your own camera frames (png/jpg, up to 32 used) to '
          'calibrate the quantized graphs on; empty = the set the shipped weights carry '
          '(camvid: CamVid frames, tabletop: generated tables), generated tables for other '
          'weights (warns)', check=_calibration_dir),
    Param('reliability', 'auto', 'string',
          'input QoS reliability: auto (match the publishers, best effort until one is seen) '
          '| reliable | best_effort', check=_one_of('auto', 'reliable', 'best_effort')),
    Param('output_reliability', 'reliable', 'string',
          'QoS reliability of the outputs (label_info is always reliable + transient local)',
          check=_one_of('reliable', 'best_effort')),
    Param('input_transport', 'raw', 'string',
          'raw: sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage (jpeg or '
          'png) on `image`/compressed, as image_transport names it',
          check=_one_of('raw', 'compressed')),
    Param('cameras', (), 'string_array',
          'camera names (unset/empty: one camera on `image`); with [front, left] the node '
          'subscribes to front/image, left/image (and front/depth, front/camera_info, ... with '
          'depth) and publishes under ~/front/, ~/left/; one model runs them batched',
          check=_cameras),
    Param('max_batch', 0, 'int',
          'at most this many frames (of different cameras) in one forward pass; 0 = the '
          'number of cameras', int_range=(0, 64)),
    Param('max_age', 0.0, 'double',
          'drop frames whose stamp is older than this many seconds on arrival (node clock, '
          'sim time aware); 0 = off', read_only=False, float_range=(0.0, 1e6)),
    Param('input_timeout', 5.0, 'double',
          's: a camera whose input has no publisher, or whose matched publisher sends no '
          'frame, for this long is reported (a throttled warning naming the likely cause, '
          'and WARN in /diagnostics) until frames arrive; 0 = off', read_only=False,
          float_range=(0.0, 3600.0)),
    Param('diagnostics_period', 1.0, 'double',
          'seconds between /diagnostics messages (0 = off)', float_range=(0.0, 3600.0)),
    Param('max_image_pixels', 16384 * 16384, 'int',
          'frames with more pixels (width x height) are dropped before any data is touched',
          int_range=(1, 2**31 - 1)),
    Param('warmup', True, 'bool', 'run the models once on a blank frame before subscribing'),
    Param('warmup_size', '320x240', 'string',
          'WIDTHxHEIGHT of the warm-up frame, or several comma-separated: give the size the '
          'camera will send, so that its first frame pays no export or compile (a compiled '
          'backend compiles per input size)', check=lambda v: None if isinstance(v, str)
          and _SIZES.match(v.replace(' ', '')) else
          f'must be WIDTHxHEIGHT[,WIDTHxHEIGHT...] (e.g. 640x480), got {v!r}'),
    Param('semantic.enabled', True, 'bool', 'run semantic segmentation'),
    Param('semantic.model', 'lraspp_mobilenet_v3_large', 'string',
          f'semantic architecture: {", ".join(SEMANTIC_MODEL_NAMES)} (ignored for shipped '
          'weights)',
          check=_one_of(*SEMANTIC_MODEL_NAMES)),
    Param('semantic.weights', 'camvid', 'string',
          'DEFAULT (torchvision pretrained, fetched into its cache on a connected machine) | '
          'camvid (shipped CamVid model: architecture, classes, colours, input size; licence '
          'CC BY-NC inherited from CamVid, unlike the Apache-2.0 code: use your own weights '
          'for commercial work) | path to a state-dict file (weights_only load) | none '
          '(random init, tests only)',
          check=_weights),
    Param('semantic.num_classes', 0, 'int',
          'classes of a weights file or random model (0 = from the file, else 21)',
          int_range=(0, 65535)),
    Param('semantic.class_names', (), 'string_array',
          'optional class names for a weights file (one per class)', check=_classes),
    Param('semantic.input_size', -1, 'int',
          "shorter side fed to the model: -1 = the weights' own (520 for torchvision "
          "DEFAULT, 360 for camvid, else native), 0 = the image's own resolution, N = "
          'resize shorter side to N', int_range=(-1, 8192)),
    Param('semantic.channels_last', True, 'bool',
          'run the semantic model in channels-last memory format (faster on CPUs and tensor '
          'cores)'),
    Param('semantic.compile', False, 'bool',
          'wrap the semantic model in torch.compile (compiled during warm-up; needs a C++ '
          'compiler on the CPU, Triton on CUDA)'),
    Param('semantic.backend', 'auto', 'string',
          'torch (eager PyTorch) | openvino | onnxruntime (the model exported to ONNX once, '
          'cached in backend.cache_dir, compiled per input size) | auto (the fastest installed '
          'for the device: on the CPU onnxruntime for fp32, openvino for bf16/fp16, else '
          'torch; torch on CUDA)', check=_one_of(*BACKENDS)),
    Param('backend.cache_dir', DEFAULT_CACHE_DIR, 'string',
          'where ONNX exports and compiled models are cached (keyed by weights content, '
          'model, input shape and backend version; at most 32 exports kept)',
          check=lambda v: None if isinstance(v, str) and v.strip() else
          f'must be a directory path, got {v!r}'),
    Param('instance.enabled', False, 'bool', 'run instance segmentation (Mask R-CNN)'),
    Param('instance.model', '', 'string',
          f'instance architecture: {", ".join(INSTANCE_MODEL_NAMES)}; empty = the one the weights '
          'file names (train_instances files, tabletop; a .onnx file is a YOLO segmentation '
          f'export, yolo_seg), else {DEFAULT_INSTANCE_MODEL}. {DEPTH_OBJECTS}: class-agnostic '
          'objects (class "object") on the support surface from the registered depth image, '
          'no weights (needs depth.enabled; parameters instance.depth_objects.*)',
          check=_one_of('', *INSTANCE_MODEL_NAMES)),
    Param('instance.backend', 'auto', 'string',
          'torch | openvino | onnxruntime | auto: the Mask R-CNN backbone, FPN and RPN head '
          'compiled per input size, box and mask heads once (cached in backend.cache_dir); '
          'proposals, ROI align, NMS and mask pasting in torch; auto = the fastest installed '
          'for the device and precision (docs/backends_performance.md)',
          check=_one_of(*BACKENDS)),
    Param('instance.weights', 'DEFAULT', 'string',
          'DEFAULT (torchvision COCO weights: downloads ~180 MB on first use) | tabletop '
          '(shipped: boxes and cylinders on a table) | path to a weights file (a '
          'train_instances file brings its architecture and class names; FILE.onnx: a YOLO '
          'segmentation export of Ultralytics, its classes and input size read from its '
          'metadata, run by ONNX Runtime or OpenVINO) | none',
          check=_weights),
    Param('instance.num_classes', 0, 'int',
          'classes of a weights file or random model incl. background (0 = from the file, '
          'else 91)', int_range=(0, 65535)),
    Param('instance.class_names', (), 'string_array',
          'optional class names for a weights file (index 0 = background)', check=_classes),
    Param('instance.score_threshold', 0.5, 'double', 'drop instances scoring below',
          read_only=False, float_range=(0.0, 1.0)),
    Param('instance.mask_threshold', 0.5, 'double',
          'mask probability above which a pixel belongs to the instance', read_only=False,
          float_range=(0.0, 1.0)),
    Param('instance.duplicate_iou', 0.5, 'double',
          'one instance per object: a detection whose mask overlaps a higher-scored one\'s '
          'with IoU above this (the same object under another class: torchvision\'s NMS is '
          'per class) becomes a further hypothesis (class, score) of that detection instead '
          'of an instance of its own; 1.0 publishes every detection of the model, as '
          'torchvision returns them', read_only=False, float_range=(0.0, 1.0)),
    Param('instance.max_detections', 100, 'int', 'keep at most this many instances',
          int_range=(1, 1000)),
    Param('instance.nms_iou', 0.7, 'double',
          'YOLO segmentation files: IoU above which the lower-scored of two boxes of one '
          'class is suppressed (Ultralytics\' iou; end-to-end exports do NMS inside the '
          'graph). Mask R-CNN keeps torchvision\'s own NMS', read_only=False,
          float_range=(0.0, 1.0)),
    Param('instance.depth_objects.min_height', 0.004, 'double',
          'depth_objects: metres above the support surface (table, bin floor, shelf) a point '
          'must rise to belong to an object; above the depth noise (a Kinect at 1 m: ~3 mm)',
          read_only=False, float_range=(0.001, 0.2)),
    Param('instance.depth_objects.max_height', 0.6, 'double',
          'depth_objects: metres above the support surface where objects end; a segment '
          'reaching higher (a wall, a person) is not an object', read_only=False,
          float_range=(0.02, 3.0)),
    Param('instance.depth_objects.plane_tolerance', 0.01, 'double',
          'depth_objects: metres from the support plane within which a point is the '
          'surface (RANSAC inlier)', read_only=False, float_range=(0.001, 0.1)),
    Param('instance.depth_objects.depth_jump', 0.02, 'double',
          'depth_objects: a depth step between neighbouring points larger than this fraction '
          'of the depth (and twice the steps beside it) separates objects', read_only=False,
          float_range=(0.002, 0.5)),
    Param('instance.depth_objects.crease_angle', 20.0, 'double',
          'depth_objects: degrees; a concave crease (surface normals turned towards each '
          'other by more than this, as where a box stands on or leans against another) '
          'separates objects; convex edges never do', read_only=False,
          float_range=(5.0, 90.0)),
    Param('instance.depth_objects.color_edge', 0.0, 'double',
          'depth_objects: RGB distance (0..1.73, colours in 0..1) above which a colour edge '
          'separates points of one continuous depth surface (two touching objects sharing a '
          'face); 0 = colour unused (printed textures split objects: measured in '
          'BENCHMARKS.md)', read_only=False, float_range=(0.0, 1.8)),
    Param('instance.depth_objects.min_points', 150, 'int',
          'depth_objects: pixels a segment needs to be an object', read_only=False,
          int_range=(1, 1_000_000)),
    Param('instance.depth_objects.min_part', 600, 'int',
          'depth_objects: pixels; the cut bands are grown by a grid cell so that a gap at '
          'the end of a crease does not join two objects (a box on a box), and a part that '
          'this breaks off an object and is smaller than this rejoins it (0 = bands not '
          'grown)', read_only=False, int_range=(0, 1_000_000)),
    Param('instance.depth_objects.stack_gap', 0.015, 'double',
          'depth_objects: metres; a segment whose upward-facing surfaces lie in two layers at '
          'least this far apart in height (and 10 sigmas of the depth noise), the upper one '
          'a compact top (a box\'s, a can\'s; not a bowl\'s rim), is cut above the lower '
          'layer: an object standing on another whose crease was lost (0 = never cut)',
          read_only=False, float_range=(0.0, 0.5)),
    Param('instance.depth_objects.stride', 2, 'int',
          'depth_objects: segment on every stride-th pixel, masks at full resolution '
          '(1 = every pixel: finer, ~3x slower)', read_only=False, int_range=(1, 8)),
    Param('instance.max_proposals', 0, 'int',
          'at most this many RPN proposals (after NMS) go to the ROI heads per image (0 = the '
          "architecture's own: torchvision's 1000 for the R50 models, the node then equals "
          'torchvision for the same file; 150 for the light one; a cap never raises it). A '
          "speed option: the box head's cost grows with the proposals (R50 v2, 640x480: 200 "
          "makes the node 0.21x of torchvision's call instead of 0.46x); its accuracy cost on "
          'R50 is not measured here (no trained R50); on the shipped light tabletop model '
          '(60 held-out tables, mask AP 0.182 with its own 150) a cap of 100 costs 0.002 AP, '
          '50 costs 0.001 (docs/backends_performance.md)',
          int_range=(0, 10000)),
    Param('instance.classes', (), 'string_array',
          'class names to keep (unset/empty keeps all)', read_only=False, check=_classes),
    Param('instance.tracking', False, 'bool',
          'keep instance ids across frames: Detection2D.id and the mask values become track '
          'ids in 1..65535 (box IoU + linear assignment, same class only)'),
    Param('instance.track_timeout', 1.0, 'double',
          'seconds (image stamps) a track survives unmatched before it is forgotten',
          read_only=False, float_range=(0.001, 3600.0)),
    Param('instance.track_iou', 0.3, 'double',
          'least box IoU between a detection and a track for a match', read_only=False,
          float_range=(0.01, 1.0)),
    Param('instance.min_size', 0, 'int',
          "Mask R-CNN's internal resize: shorter side (0 = the image's own size, no resize)",
          int_range=(0, 4096)),
    Param('instance.max_size', 0, 'int',
          "Mask R-CNN's internal resize: longer side cap (0 = none at native size, else "
          "torchvision's 1333/800 of min_size)", int_range=(0, 8192)),
    Param('depth.enabled', False, 'bool',
          '3D from a registered depth image: subscribe to depth and camera_info, publish '
          '~/instances/detections_3d, ~/instances/points, ~/instances/markers, '
          '~/semantic/points'),
    Param('depth.target_frame', '', 'string',
          "frame of every 3D output ('' = the colour image's own frame): points are "
          "transformed with tf2's transform at the image's stamp before the statistics",
          check=lambda v: None if isinstance(v, str) and not v.startswith('/') and v == v.strip()
          else f'must be a tf frame id without a leading slash or spaces, got {v!r}'),
    Param('depth.tf_timeout', 0.1, 'double',
          's to wait for the transform at the image\'s stamp (after inference) before the '
          "frame's 3D outputs are skipped (no_transform)", read_only=False,
          float_range=(0.0, 10.0)),
    Param('depth.slop', 0.02, 'double',
          "s: how far a depth image's stamp may be from the colour image's", read_only=False,
          float_range=(0.0, 10.0)),
    Param('depth.min', 0.1, 'double', 'm: nearest valid depth', read_only=False,
          float_range=(0.0, 1000.0)),
    Param('depth.max', 20.0, 'double', 'm: farthest valid depth', read_only=False,
          float_range=(0.0, 1000.0)),
    Param('depth.min_points', 20, 'int',
          'least valid 3D points for an instance to get a Detection3D', read_only=False,
          int_range=(1, 100_000_000)),
    Param('depth.stride', 2, 'int',
          'the semantic cloud takes every stride-th pixel in x and y (rows/cols 0, s, 2s..)',
          read_only=False, int_range=(1, 64)),
]

BY_NAME = {p.name: p for p in PARAMS}

_PY_TYPES = {
    'bool': (bool,), 'int': (int,), 'double': (float, int), 'string': (str,),
    'string_array': (list, tuple),
}


def validate(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name`` (None if it is, or unknown)."""
    p = BY_NAME.get(name)
    if p is None or value is None:
        return None
    if not isinstance(value, _PY_TYPES[p.type]) or (p.type != 'bool' and isinstance(
            value, bool)):
        return f'{name}: expected {p.type}, got {type(value).__name__}'
    if p.int_range and not p.int_range[0] <= value <= p.int_range[1]:
        return f'{name}: {value} outside [{p.int_range[0]}, {p.int_range[1]}]'
    if p.float_range and not p.float_range[0] <= value <= p.float_range[1]:
        return f'{name}: {value} outside [{p.float_range[0]}, {p.float_range[1]}]'
    if p.check:
        err = p.check(value)
        if err:
            return f'{name}: {err}'
    return None


def validate_together(values: dict[str, Any]) -> str | None:
    """Why a set of parameter values is inconsistent (None if it is not): ``depth.min``
    must stay below ``depth.max``; ``instance.model: depth_objects`` needs ``depth.enabled``.
    """
    if values.get('instance.model') == DEPTH_OBJECTS and values.get('instance.enabled') \
            and values.get('depth.enabled') is False:
        return ('instance.model depth_objects segments the registered depth image: it needs '
                'depth.enabled: true')
    lo, hi = values.get('depth.min'), values.get('depth.max')
    if lo is not None and hi is not None and not lo < hi:
        return f'depth.min ({lo}) must be less than depth.max ({hi})'
    return None
