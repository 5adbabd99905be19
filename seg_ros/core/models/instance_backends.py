"""Compiled Mask R-CNN: its convolutional parts on OpenVINO or ONNX Runtime. No rclpy.

torchvision's Mask R-CNN does not export as one graph that keeps its outputs: proposal
selection, ROI alignment, per-class NMS and mask pasting are data-dependent. What does
export is every convolution, which is nearly all of a frame's time on a CPU:

* the **trunk**: backbone, FPN and the RPN head (objectness and box deltas per level), on
  the normalised, padded batch the model's own transform makes; one graph per input shape;
* the **box head** over the ROI-aligned proposals (R, 256, 7, 7) -> (R, 1024), and the
  **mask head with its predictor** over the detections (D, 256, 14, 14) -> mask logits:
  one graph each, with the ROI count a dynamic dimension (no re-export as counts change).

Exports are cached like the semantic ones (same keys, same bounded caches:
:class:`~seg_ros.core.models.backends.CompiledLabels`' machinery). Compiled modules stand in for
the eager ones inside the torchvision model; anchors, proposal selection, ROI align, the box
predictor, NMS and mask pasting stay torchvision's, in torch, so boxes, masks and scores
follow from the same code.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from seg_ros.core.models.backends import DEFAULT_CACHE_DIR, CompiledLabels, log
from seg_ros.core.models.quantize import CalibrationSet

#: Largest ROI count the head graphs accept (a batch of 64 frames of 1000 proposals).
MAX_ROIS = 64_000


class TrunkGraph(torch.nn.Module):
    """Backbone + FPN (+ RPN head) as an exportable graph: (N, 3, H, W) normalised float ->
    the feature maps in the backbone's key order, then, with an RPN head, its objectness
    maps and its box-delta maps, one per level.
    """

    def __init__(self, backbone: torch.nn.Module, rpn_head: torch.nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn_head = rpn_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = list(self.backbone(x).values())
        if self.rpn_head is None:
            return tuple(feats)
        objectness, deltas = self.rpn_head(feats)
        return (*feats, *objectness, *deltas)


class CompiledTensors(CompiledLabels):
    """A float-in, floats-out graph on a compiled backend (the instance parts): runs return
    a list of float32 tensors on ``device``.
    """

    outputs: list[str]

    def key_extra(self) -> str:
        return 'outputs:' + ','.join(self.outputs)

    def prepare(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.graph.to('cpu')

    def output_names(self) -> list[str]:
        return list(self.outputs)

    def run(self, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """The graph's outputs for ``x``; ``shape`` = the compiled graph's key (default
        ``x``'s shape).
        """
        if x.dtype != torch.float32:  # autocast on CUDA: the graphs take float32
            x = x.float()
        return self.compiled(shape or tuple(int(s) for s in x.shape), x.dtype)(x)

    def openvino_runner(self, path: Path, nhw: tuple[int, int, int], dtype: torch.dtype):
        request = self.openvino_request(path, 'instance.backend')
        n_out = len(self.outputs)

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            res = request.infer({0: x.contiguous().numpy()}, share_inputs=True,
                                share_outputs=True)
            # the request's buffers are reused next call: copy them out
            return [torch.from_numpy(np.array(res[i], dtype=np.float32, copy=True))
                    for i in range(n_out)]
        return run

    def onnxruntime_runner(self, path: Path, nhw: tuple[int, int, int], dtype: torch.dtype):
        # torch's proposal selection and ROI align run between the graphs on the same
        # cores: ORT's threads must not keep spinning there (measured: slower than eager)
        session = self.ort_session(path, 'instance.backend', spin=False, tensorrt=False)
        device = self.device

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            outs = session.run(None, {'image': x.detach().cpu().contiguous().numpy()})
            return [torch.from_numpy(o).to(device) for o in outs]
        return run


class CompiledFeatures(CompiledTensors):
    """The trunk of a batch (features, and the RPN head's maps when given one), one compiled
    graph per padded batch shape (sizes are multiples of 32).
    """

    def __init__(self, backend: str, backbone: torch.nn.Module, name: str,
                 device: torch.device, precision: str = 'fp32',
                 cache_dir: str = DEFAULT_CACHE_DIR,
                 report: Callable[[str], None] = log.info,
                 rpn_head: torch.nn.Module | None = None,
                 normalise: tuple[Sequence[float], Sequence[float]] = ((0.0,) * 3, (1.0,) * 3),
                 calibration: Callable[[], CalibrationSet] | None = None) -> None:
        with torch.inference_mode():
            probe = backbone.eval()(torch.zeros(1, 3, 64, 64, device=next(
                backbone.parameters()).device))
        self.names = list(probe.keys())
        self.with_rpn = rpn_head is not None
        self.outputs = [f'feature_{n}' for n in self.names]
        if self.with_rpn:
            self.outputs += [f'objectness_{n}' for n in self.names]
            self.outputs += [f'deltas_{n}' for n in self.names]
        self.mean = np.asarray(normalise[0], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(normalise[1], np.float32).reshape(1, 3, 1, 1)
        super().__init__(backend, TrunkGraph(backbone, rpn_head), name + '-backbone', device,
                         precision, cache_dir, report, calibration)

    def calibration_inputs(self, shape: tuple[int, ...], dtype: torch.dtype
                           ) -> list[np.ndarray]:
        """Calibration frames as the trunk sees a batch: resized to the padded size and
        normalised as the model's transform does.
        """
        return [(x - self.mean) / self.std for x in super().calibration_inputs(shape, dtype)]

    def trunk(self, x: torch.Tensor) -> tuple[OrderedDict[str, torch.Tensor],
                                              tuple[list[torch.Tensor], list[torch.Tensor]] |
                                              None]:
        """The backbone's OrderedDict of feature maps for a normalised (N, 3, H, W) batch,
        and the RPN head's (objectness, deltas) lists when compiled with it.
        """
        outs = self.run(x)
        k = len(self.names)
        feats = OrderedDict(zip(self.names, outs[:k], strict=True))
        return feats, ((outs[k:2 * k], outs[2 * k:]) if self.with_rpn else None)


class CompiledRows(CompiledTensors):
    """A per-ROI head, (R, C, h, w) -> one tensor with R rows, exported once with R a
    dynamic dimension. No ROI (R = 0) runs the eager module (nothing to compute).
    """

    def __init__(self, backend: str, module: torch.nn.Module, name: str,
                 device: torch.device, row_shape: tuple[int, ...], precision: str = 'fp32',
                 cache_dir: str = DEFAULT_CACHE_DIR,
                 report: Callable[[str], None] = log.info) -> None:
        self.outputs = ['rows']
        self.eager = module
        self.row_shape = tuple(int(s) for s in row_shape)
        super().__init__(backend, module, name, device, precision, cache_dir, report)

    def warm(self) -> None:
        """Export (unless cached) and compile now."""
        self.compiled((2, *self.row_shape), torch.float32)

    def key_extra(self) -> str:
        return f'rows<= {MAX_ROIS}'

    def export_options(self) -> dict:
        return {'dynamic_shapes': ({0: torch.export.Dim('rois', min=1, max=MAX_ROIS)},)}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return self.eager(x)
        # one graph for every count: its key (and the export's example) has 2 rows
        return self.run(x, (2, *self.row_shape))[0]


class CompiledBackbone(torch.nn.Module):
    """Stands in for a Mask R-CNN's ``backbone``: same call, same OrderedDict of features.
    With the RPN head compiled into the same graph, its maps wait in :attr:`rpn_maps` for
    the :class:`CompiledRPNHead` of the same forward.
    """

    def __init__(self, compiled: CompiledFeatures, out_channels: int) -> None:
        super().__init__()
        self.compiled = compiled
        self.out_channels = out_channels
        self.rpn_maps: tuple[list[torch.Tensor], tuple] | None = None

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats, maps = self.compiled.trunk(x)
        self.rpn_maps = None if maps is None else (list(feats.values()), maps)
        return feats


class CompiledRPNHead(torch.nn.Module):
    """Stands in for the RPN head: hands over the maps the compiled trunk computed for these
    very feature tensors (checked by identity); any other input runs the eager head.
    """

    def __init__(self, backbone: CompiledBackbone, eager: torch.nn.Module) -> None:
        super().__init__()
        self.source = [backbone]  # a list: not a submodule (no second registration)
        self.eager = eager

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        backbone = self.source[0]
        stash, backbone.rpn_maps = backbone.rpn_maps, None
        if stash is not None and len(stash[0]) == len(x) and all(
                a is b for a, b in zip(stash[0], x, strict=True)):
            return stash[1]
        return self.eager(x)


class CompiledHead(torch.nn.Module):
    """Stands in for a per-ROI head (the box head, or the mask head with its predictor)."""

    def __init__(self, compiled: CompiledRows) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x)


def compile_instance_model(model: torch.nn.Module, backend: str, name: str,
                           device: torch.device, precision: str = 'fp32',
                           cache_dir: str = DEFAULT_CACHE_DIR,
                           report: Callable[[str], None] = log.info,
                           calibration: Callable[[], CalibrationSet] | None = None
                           ) -> list[CompiledTensors]:
    """Put the compiled trunk (backbone + FPN + RPN head), box head and mask head (+ mask
    predictor) in a torchvision Mask R-CNN's place; returns the compiled graphs (exports
    happen on first use: per input shape for the trunk, once for each head). ``int8``
    quantizes the trunk (calibrated on ``calibration``'s frames); the heads run fp32.
    """
    rpn_head = model.rpn.head
    trunk = CompiledFeatures(backend, model.backbone, name, device, precision, cache_dir,
                             report, rpn_head=rpn_head, calibration=calibration,
                             normalise=(model.transform.image_mean, model.transform.image_std))
    # int8: the trunk only (the per-ROI heads are small matrix products on few rows)
    precision = 'fp32' if precision == 'int8' else precision
    backbone = CompiledBackbone(trunk, model.backbone.out_channels)
    model.backbone = backbone
    model.rpn.head = CompiledRPNHead(backbone, rpn_head)
    heads = model.roi_heads
    channels = backbone.out_channels
    box = CompiledRows(backend, heads.box_head, name + '-box_head', device,
                       (channels, *_pair(heads.box_roi_pool.output_size)), precision,
                       cache_dir, report)
    heads.box_head = CompiledHead(box)
    compiled: list[CompiledTensors] = [trunk, box]
    if heads.has_mask():
        mask = CompiledRows(backend, torch.nn.Sequential(heads.mask_head, heads.mask_predictor),
                            name + '-mask_head', device,
                            (channels, *_pair(heads.mask_roi_pool.output_size)), precision,
                            cache_dir, report)
        heads.mask_head = CompiledHead(mask)
        heads.mask_predictor = torch.nn.Identity()
        compiled.append(mask)
    return compiled


def _pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """An ROI align output size as (h, w) (torchvision takes an int or a pair)."""
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])
