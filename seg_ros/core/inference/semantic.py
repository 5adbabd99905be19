"""Semantic segmentation: frame tensor -> label map (+ colour) on the model's device.

No rclpy.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from seg_ros.core.inference.label_upsample import UpsampledMax, coarse_scores, has_coarse_scores
from seg_ros.core.inference.results import SemanticResult
from seg_ros.core.models import backends
from seg_ros.core.models.quantize import CalibrationSet
from seg_ros.core.models.registry import LoadedModel
from seg_ros.core.spatial.colors import make_palette

PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')


def autocast_context(device: torch.device, precision: str):
    """Autocast for fp16/bf16 on CUDA; a no-op elsewhere (the CPU runs fp32)."""
    if device.type == 'cuda' and precision in ('fp16', 'bf16'):
        dtype = torch.float16 if precision == 'fp16' else torch.bfloat16
        return torch.autocast('cuda', dtype=dtype)
    return contextlib.nullcontext()


def resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (N, C, H, W) float batch so its shorter side is ``size`` (bilinear).

    ``size <= 0`` or equal to the shorter side returns ``x`` unchanged. Downscaling is
    antialiased, as torchvision's own ``SemanticSegmentation`` transform does.
    """
    h, w = x.shape[-2:]
    if size <= 0 or size == min(h, w):
        return x
    s = size / min(h, w)
    return F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                         mode='bilinear', align_corners=False, antialias=s < 1)


class LabelGraph(torch.nn.Module):
    """What a compiled backend runs for one frame batch: normalise, resize to the model's
    input size, the model, upsample to the image size, first class maximum, cast.

    Input: (N, 3, H, W) float RGB in [0, 1], or (N, H, W, 3) uint8 RGB as the message
    carries it (the conversion then runs inside the graph too). Output: (N, H, W)
    ``label_dtype``; with ``coarse`` set (a torchvision LR-ASPP / DeepLabV3 / FCN only) the
    model's (N, C, h, w) float class scores before its upsample instead, whose labels
    :class:`~seg_ros.core.inference.label_upsample.UpsampledMax` takes outside the graph.
    """

    def __init__(self, model: torch.nn.Module, scale: torch.Tensor, shift: torch.Tensor,
                 input_size: int, label_dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.register_buffer('scale', scale.detach().cpu().clone())
        self.register_buffer('shift', shift.detach().cpu().clone())
        self.input_size = input_size
        self.label_dtype = label_dtype
        self.image_hw = (0, 0)  # set (python ints) before tracing: sizes stay static
        #: the class maximum as a chain of compares (see :func:`first_max`), not ArgMax
        self.chain_max = False
        #: the graph ends at the model's coarse class scores (see the class doc)
        self.coarse = False

    def model_hw(self, h: int, w: int) -> tuple[int, int]:
        """The size the model sees for an (h, w) image."""
        if self.input_size > 0 and self.input_size != min(h, w):
            s = self.input_size / min(h, w)
            return max(1, round(h * s)), max(1, round(w * s))
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.image_hw
        if x.dtype == torch.uint8:  # (N, H, W, 3) pixels: x / 255 folded into the scale
            x = x.permute(0, 3, 1, 2).to(torch.float32) * (self.scale / 255.0) + self.shift
        else:
            x = x * self.scale + self.shift
        if self.model_hw(h, w) != (h, w):
            x = F.interpolate(x, size=self.model_hw(h, w), mode='bilinear',
                              align_corners=False, antialias=self.input_size < min(h, w))
        if self.coarse:
            return coarse_scores(self.model, x)
        out = self.model(x)['out']
        if tuple(out.shape[-2:]) != (h, w):
            out = F.interpolate(out, size=(h, w), mode='bilinear', align_corners=False)
        if self.chain_max:
            return first_max(out).to(self.label_dtype)
        # int32 before the narrowing cast: ONNX casts int64 -> uint8 fine, but some
        # backends only fuse ArgMax with an int32 output
        return out.argmax(1).to(torch.int32).to(self.label_dtype)


def first_max(scores: torch.Tensor) -> torch.Tensor:
    """The index of the first maximum over dim 1 of (N, C, H, W) scores, as (N, H, W)
    int32: the same labels as ``argmax(1)`` (ties go to the lower class), written as C - 1
    element-wise compares. OpenVINO runs ArgMax as a TopK that is slow on its blocked
    layouts (20.1 ms of a 57.5 ms int8 graph for 21 classes at 640x480); the chain fuses
    into a few element-wise kernels (8.6 ms). BENCHMARKS.md, "INT8 on the CPU".
    """
    best = scores[:, 0]
    index = torch.zeros_like(best, dtype=torch.int32)
    for c in range(1, scores.shape[1]):
        v = scores[:, c]
        index = torch.where(v > best, torch.tensor(c, dtype=torch.int32), index)
        best = torch.maximum(best, v)
    return index


class SemanticSegmenter:
    """Runs a semantic model on one frame at a time.

    Args:
        loaded: the model and its metadata
            (:func:`~seg_ros.core.models.registry.load_semantic_model`).
        device: the model's device.
        input_size: shorter side fed to the model; ``-1`` = the weights' preferred size
            (``loaded.input_size``), ``0`` = the image's own resolution.
        precision: ``fp32`` | ``fp16`` | ``bf16`` (autocast, CUDA only; a compiled backend's
            own mechanism on the CPU) | ``int8`` (a compiled backend's static quantization).
        channels_last: run the model in channels-last memory format (faster convolutions
            on CPUs and tensor cores; same results up to float rounding).
        compile: wrap the model in ``torch.compile`` (compiles on the first frame, so
            warm up before serving).
        backend: ``torch`` (eager) | ``openvino`` | ``onnxruntime`` (a compiled graph of
            normalise + model + upsample + class maximum, :mod:`seg_ros.core.models.backends`);
            ``auto`` = the fastest installed for the device.
        cache_dir: on-disk cache of the ONNX exports and compiled models.
        report: called with one line per export / compile / precision fallback.
        calibration: for ``int8``: returns the frames to calibrate on
            (:func:`~seg_ros.core.models.quantize.calibration_set`).
    """

    def __init__(self, loaded: LoadedModel, device: torch.device | str, input_size: int = -1,
                 precision: str = 'fp32', channels_last: bool = True,
                 compile: bool = False, backend: str = 'torch',
                 cache_dir: str = backends.DEFAULT_CACHE_DIR,
                 report: Callable[[str], None] = backends.log.info,
                 calibration: Callable[[], CalibrationSet] | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        #: seconds of the last model call alone (the torch forward, or the compiled graph)
        self.last_forward_s = 0.0
        self.loaded = loaded
        self.device = torch.device(device)
        self.input_size = loaded.input_size if input_size < 0 else int(input_size)
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = loaded.model.to(memory_format=self.memory_format)
        if compile:
            self.model = torch.compile(self.model)
        self.mean = torch.tensor(loaded.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(loaded.std, device=self.device).view(1, 3, 1, 1)
        # (x - mean) / std as one fused multiply-add per pixel.
        self._norm_scale = 1.0 / self.std
        self._norm_shift = -self.mean / self.std
        self.num_classes = loaded.num_classes
        self.label_dtype = torch.uint8 if self.num_classes <= 256 else torch.uint16
        self.palette = torch.from_numpy(
            make_palette(self.num_classes, loaded.palette)).to(self.device)
        self.backend = backends.resolve(backend, self.device, precision)
        self.compiled: backends.CompiledLabels | None = None
        if self.backend != 'torch':
            graph = LabelGraph(loaded.model, self._norm_scale, self._norm_shift,
                                        self.input_size, self.label_dtype)
            graph.chain_max = self.backend == 'openvino'
            # int8: the graph stops at the coarse class scores, the labels come from
            # UpsampledMax (the same labels; upsampling every class map was a third of the
            # int8 graph: BENCHMARKS.md, "INT8, the class maximum without full-size score
            # maps")
            graph.coarse = precision == 'int8' and has_coarse_scores(loaded.model)
            self._tails: dict[tuple[int, ...], UpsampledMax] = {}
            self.compiled = backends.CompiledLabels(self.backend, graph, loaded.name,
                                                    self.device, precision, cache_dir, report,
                                                    calibration)

    @property
    def label_encoding(self) -> str:
        """Image encoding of the label map: mono8, or mono16 beyond 256 classes."""
        return 'mono8' if self.label_dtype == torch.uint8 else 'mono16'

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """``(image - mean) / std`` in one fused pass, in the model's memory format.

        A frame from ``frame_to_device`` is channels-last already, so no copy follows.
        """
        x = torch.addcmul(self._norm_shift, image, self._norm_scale)
        return x.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Class scores at the input resolution.

        Args:
            image: (N, 3, H, W) float RGB in [0, 1] on the model's device.

        Returns:
            (N, num_classes, H, W) float32 logits (bilinear back to H x W).
        """
        h, w = image.shape[-2:]
        x = self.normalise(image)
        if self.input_size > 0 and self.input_size != min(h, w):
            x = resize_shorter(x, self.input_size).contiguous(memory_format=self.memory_format)
        with autocast_context(self.device, self.precision):
            t0 = time.perf_counter()
            out = self.model(x)['out']
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
            self.last_forward_s = time.perf_counter() - t0
        out = out.float()
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode='bilinear', align_corners=False)
        return out

    @torch.inference_mode()
    def from_pixels(self, pixels: torch.Tensor | list[torch.Tensor],
                    want_color: bool | list[bool] = False
                    ) -> SemanticResult | list[SemanticResult]:
        """Label frames from their (N, H, W, 3) uint8 RGB host pixels (or a list of
        (1, H, W, 3) frames): with a compiled backend the conversion to float runs inside its
        graph, and no torch kernel runs before it (an idle torch thread pool keeps spinning
        for a while after its work). One result for N = 1 and a bool ``want_color``, else a
        list.
        """
        assert self.compiled is not None, 'a compiled backend only'
        t0 = time.perf_counter()
        labels = self._compiled_batch(pixels)
        self.last_forward_s = time.perf_counter() - t0
        return self._results(labels, want_color)

    def _compiled_batch(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """A batch (a tensor, or a list of one-frame tensors) through the compiled graph one
        frame at a time: one graph per image size (no export and compile stall the first
        time each batch size occurs), and on the CPU one call per frame measured no slower
        than one call for the batch (BENCHMARKS.md, "Many cameras").
        """
        frames = list(x) if isinstance(x, list) else [x[i:i + 1] for i in range(x.shape[0])]
        if len(frames) == 1:
            return self._labels(frames[0])
        return torch.cat([self._labels(f) for f in frames])

    def _labels(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame's labels from the compiled graph (through :class:`UpsampledMax` when
        the graph ends at coarse scores).
        """
        out = self.compiled(frame)
        graph = self.compiled.graph
        if not graph.coarse:
            return out
        hw = tuple(frame.shape[1:3]) if frame.dtype == torch.uint8 else tuple(frame.shape[-2:])
        key = (*hw, *out.shape[-2:])
        tail = self._tails.get(key)
        if tail is None:
            if len(self._tails) >= backends.SHAPES_IN_MEMORY:  # as many as compiled graphs
                self._tails.pop(next(iter(self._tails)))
            tail = self._tails[key] = UpsampledMax(
                [tuple(out.shape[-2:]), graph.model_hw(*hw), hw], out.device)
        return tail(out).to(self.label_dtype)

    def _results(self, labels: torch.Tensor, want_color: bool | list[bool]
                 ) -> SemanticResult | list[SemanticResult]:
        single = isinstance(want_color, bool)
        wants = [want_color] * labels.shape[0] if single else list(want_color)
        host = labels.cpu().numpy()
        out = []
        for i, want in enumerate(wants):
            color = self.palette[labels[i].long()].cpu().numpy() if want else None
            out.append(SemanticResult(labels=np.ascontiguousarray(host[i]), color=color))
        return out[0] if single and len(out) == 1 else out

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, want_color: bool | list[bool] = False
                 ) -> SemanticResult | list[SemanticResult]:
        """Label a frame, or a batch of frames of one size in one forward pass.

        Args:
            image: (N, 3, H, W) float RGB in [0, 1] on the model's device.
            want_color: also return the colour-coded label image (per frame with a list).

        Returns:
            :class:`SemanticResult` (N = 1 and a bool ``want_color``) or a list of them,
            with host arrays; only uint8/uint16 data leaves the device.
        """
        # max().indices: same first-maximum rule as argmax, ~40% faster on channels-last
        # logits on the CPU here (6.0 vs 10.6 ms for 21 x 480 x 640).
        if self.compiled is not None:
            t0 = time.perf_counter()
            labels = self._compiled_batch(image)
            self.last_forward_s = time.perf_counter() - t0
        else:
            labels = self.logits(image).max(1).indices.to(self.label_dtype)
        return self._results(labels, want_color)
