"""``precision: int8``: static post-training quantization of an exported graph. No rclpy.

The field's tools do the work: NNCF (``nncf.quantize``, its MIXED preset: symmetric int8
weights, asymmetric activations -- MobileNetV3's hard-swish goes below zero -- with the
image's first convolution and the output convolutions left in float; on the CamVid model
-0.21 mIoU points, where PERFORMANCE's symmetric activations on every convolution lost 0.88)
for OpenVINO, and ``onnxruntime.quantization.quantize_static`` (QOperator format, the
convolutions but the image's first and those that make the graph's outputs, per-channel int8
weights, uint8 activations, percentile calibration; CamVid: -0.57 mIoU points, where every
convolution with MinMax lost 1.88) for ONNX Runtime. Both calibrate on a small set of frames:

* the shipped models carry theirs: ``camvid`` a dozen CamVid training frames
  (``seg_ros/weights/calibration/camvid/``), ``tabletop`` generated tables
  (:mod:`seg_ros.synthetic.tabletop`, fixed seeds);
* any other model takes a folder of the user's own frames (``int8.calibration_dir``); with
  none it calibrates on generated tables and the loader warns that the ranges may not fit.

A calibration set is a list of (H, W, 3) uint8 RGB frames; :func:`fit` resizes them to the
graph's input size. Its digest is part of the quantized graph's cache key.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: at most this many frames of a folder are used (spread evenly over its sorted names)
MAX_FRAMES = 32
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm')
CALIBRATION_DIR = Path(__file__).resolve().parents[2] / 'weights' / 'calibration'
#: generated tables for calibration: count and size
GENERATED_FRAMES = 16
GENERATED_SIZE = (480, 640)
#: the smallest side a calibration frame may have
MIN_SIDE = 16


class CalibrationError(ValueError):
    """The calibration frames cannot be had: the message says why."""


@dataclass
class CalibrationSet:
    """Frames to calibrate on and where they came from (``source`` is logged)."""

    frames: list[np.ndarray]
    source: str

    @functools.cached_property
    def digest(self) -> str:
        """The frames' content hash (computed once)."""
        h = hashlib.sha256()
        for f in self.frames:
            h.update(f'{f.shape};'.encode())
            h.update(np.ascontiguousarray(f).tobytes())
        return h.hexdigest()[:16]


def folder_frames(folder: str | Path, limit: int = MAX_FRAMES) -> list[np.ndarray]:
    """Up to ``limit`` frames of an image folder, spread evenly over its sorted file names,
    as (H, W, 3) uint8 RGB.

    Raises:
        CalibrationError: not a folder, no image in it, or an image that does not decode.
    """
    from PIL import Image, UnidentifiedImageError
    path = Path(os.path.expanduser(str(folder)))
    if not path.is_dir():
        raise CalibrationError(f'int8.calibration_dir {str(folder)!r} is not a folder')
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f'int8.calibration_dir {str(folder)!r} holds no image '
                               f'({", ".join(IMAGE_SUFFIXES)})')
    if len(files) > limit:
        files = [files[round(i * (len(files) - 1) / (limit - 1))] for i in range(limit)]
    frames = []
    for f in files:
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert('RGB'))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise CalibrationError(f'calibration frame {f} does not decode: {exc}') from None
        if min(rgb.shape[:2]) < MIN_SIDE:
            raise CalibrationError(f'calibration frame {f} is {rgb.shape[1]}x{rgb.shape[0]}: '
                                   f'smaller than {MIN_SIDE} pixels')
        frames.append(rgb)
    return frames


def generated_frames(n: int = GENERATED_FRAMES, size: tuple[int, int] = GENERATED_SIZE
                     ) -> list[np.ndarray]:
    """``n`` generated tables (fixed seeds, none of the evaluation seeds), (H, W, 3) uint8."""
    from seg_ros.synthetic import tabletop
    h, w = size
    return [tabletop.render(np.random.default_rng([9001, i]), w, h).rgb for i in range(n)]


def calibration_set(folder: str, shipped: str, warn: Callable[[str], None] = log.warning
                    ) -> CalibrationSet:
    """The frames to calibrate a model on: the user's folder when given, else the set the
    shipped weights carry (``shipped``: ``camvid`` | ``tabletop``), else generated tables
    with a warning.
    """
    if folder:
        frames = folder_frames(folder)
        return CalibrationSet(frames, f'{len(frames)} frames of {folder}')
    if shipped == 'tabletop':
        return CalibrationSet(generated_frames(), 'the generated tables the tabletop model '
                              'carries')
    if shipped and (CALIBRATION_DIR / shipped).is_dir():
        return CalibrationSet(folder_frames(CALIBRATION_DIR / shipped),
                              f'the {shipped} frames the weights carry')
    warn('precision=int8: no int8.calibration_dir for these weights; calibrating on generated '
         'tables (give a folder of your own camera frames for ranges that fit your scenes)')
    return CalibrationSet(generated_frames(), 'generated tables (no int8.calibration_dir)')


def fit(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """A (H, W, 3) uint8 frame resized to ``h`` x ``w`` (bilinear, antialiased when
    shrinking), as (h, w, 3) uint8.
    """
    if frame.shape[:2] == (h, w):
        return np.ascontiguousarray(frame)
    x = torch.from_numpy(np.array(frame)).permute(2, 0, 1)[None].float()
    shrink = h < frame.shape[0] or w < frame.shape[1]
    y = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False, antialias=shrink)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def versions(backend: str) -> str:
    """The quantizer's and runtime's versions and the recipe (part of the cache key)."""
    if backend == 'openvino':
        import nncf
        import openvino as ov
        return f'nncf{nncf.__version__}-ov{ov.__version__}-mixed-boundary-fp32'
    import onnxruntime as ort
    return f'ort{ort.__version__}-qoperator-conv-boundary-fp32-percentile-strided'


def quantizer_missing(backend: str) -> str | None:
    """None when ``backend`` can quantize here; else the one line that says why not."""
    module, pip = ('nncf', 'nncf') if backend == 'openvino' else \
        ('onnxruntime.quantization', 'onnxruntime')
    if backend not in ('openvino', 'onnxruntime'):
        return f'backend {backend} has no int8 mode (use openvino or onnxruntime)'
    try:
        __import__(module)
    except ImportError as exc:
        return f'backend {backend} quantizes with {module}, which does not import here ' \
               f'({exc}): pip install {pip}'
    return None


def quantize_openvino(onnx_path: Path, inputs: Sequence[np.ndarray], out_xml: Path) -> None:
    """NNCF's static quantization of ``onnx_path`` on ``inputs`` (one array per call of the
    graph's single input), saved as OpenVINO IR at ``out_xml`` (written atomically).
    """
    import nncf
    import openvino as ov
    model = ov.Core().read_model(str(onnx_path))
    keep = set(boundary_convolutions(str(onnx_path)))
    ignored = [op.get_friendly_name() for op in model.get_ordered_ops()
               if op.get_type_name() in ('Convolution', 'GroupConvolution')
               and op.get_friendly_name().split('/')[0] in keep]
    quantized = nncf.quantize(model, nncf.Dataset(list(inputs)), subset_size=len(inputs),
                              preset=nncf.QuantizationPreset.MIXED,
                              ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    tmp = Path(tempfile.mkdtemp(dir=out_xml.parent, prefix='.int8-'))
    try:
        ov.save_model(quantized, str(tmp / out_xml.name), compress_to_fp16=False)
        os.replace(tmp / out_xml.with_suffix('.bin').name, out_xml.with_suffix('.bin'))
        os.replace(tmp / out_xml.name, out_xml)  # the .xml last: its presence means done
    finally:
        for f in tmp.iterdir():
            f.unlink(missing_ok=True)
        tmp.rmdir()


def quantize_onnxruntime(onnx_path: Path, inputs: Sequence[np.ndarray], out_onnx: Path,
                         reduce_range: bool = False) -> None:
    """ONNX Runtime's static quantization of ``onnx_path``'s convolutions, calibrated on
    ``inputs``, saved at ``out_onnx`` (written atomically). ``reduce_range``: 7-bit weights,
    for CPUs without VNNI (whose u8 x s8 products can saturate).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The frames in strides of one (``CalibStridedMinMax``): ONNX Runtime's histogram
        calibrators keep every intermediate tensor of a stride in memory (16 frames at
        1080p: 23 GB, OOM-killed here); one frame at a time their histograms merge.
        """

        def __init__(self) -> None:
            self.set_range(0, len(inputs))

        def __len__(self) -> int:
            return len(inputs)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(inputs[start_index:end_index])

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {'image': x}

    tmp = Path(tempfile.mkdtemp(dir=out_onnx.parent, prefix='.int8-'))
    try:
        pre = tmp / 'pre.onnx'
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        # measured (BENCHMARKS.md): QOperator convolutions alone are the fastest of ONNX
        # Runtime's int8 forms for MobileNetV3; quantized Mul/Add (squeeze-excite) are slower
        # than fp32
        quantize_static(str(pre), str(tmp / 'q.onnx'), Reader(),
                        quant_format=QuantFormat.QOperator, op_types_to_quantize=['Conv'],
                        nodes_to_exclude=boundary_convolutions(str(pre)),
                        per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={'CalibStridedMinMax': 1})
        os.replace(tmp / 'q.onnx', out_onnx)
    finally:
        for f in tmp.iterdir():
            f.unlink(missing_ok=True)
        tmp.rmdir()


def boundary_convolutions(onnx_file: str) -> list[str]:
    """Names of an ONNX graph's first convolution (on the image) and of the convolutions
    whose outputs reach a graph output through no other convolution (a segmentation model's
    classifiers, a detector's FPN and RPN outputs): the layers int8 hurts most.
    """
    import onnx
    graph = onnx.load(onnx_file, load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    convs = [n for n in graph.node if n.op_type == 'Conv']

    def reaches_output(node) -> bool:
        todo, seen = list(node.output), set()
        while todo:
            t = todo.pop()
            if t in outputs:
                return True
            if t in seen:
                continue
            seen.add(t)
            for c in consumers.get(t, ()):
                if c.op_type != 'Conv':
                    todo.extend(c.output)
        return False
    return [n.name for i, n in enumerate(convs) if i == 0 or reaches_output(n)]


def has_vnni() -> bool:
    """Whether the CPU has 8-bit dot products (AVX-512 VNNI or AVX-VNNI)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((ln for ln in f if ln.startswith('flags')), '').split()
    except OSError:
        return False
    return 'avx512_vnni' in flags or 'avx_vnni' in flags
