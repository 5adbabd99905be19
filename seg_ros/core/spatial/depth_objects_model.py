"""depth_objects behind torchvision's Mask R-CNN interface: the instance segmenter serves it
like every instance model (ids, tracking, 3D, overlay). No rclpy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace

import torch

from seg_ros.core.spatial.depth_layers import split_stacks
from seg_ros.core.spatial.depth_objects import DepthObjectsParams, _empty, segment
from seg_ros.core.threads import cpu_threads

#: torch threads :func:`segment` runs on, on the CPU. Its ~300 operations are small (a 320x240
#: grid): with two threads each one forks and joins, and inside the node (DDS and executor
#: threads beside it) the joins waited: node p50 on the real photos, depth_objects / learned
#: ``tabletop``, 1.38 and 1.17 with two threads against 1.00 and 0.83 with one, alternating
#: runs of ``tools/bench_rgbd_node.py``. (Alone in a process two threads are ~15 % faster.)
CPU_THREADS = 1


@dataclass(frozen=True)
class DepthFrame:
    """A colour frame's registered depth for :class:`DepthObjectsModel`: ``z`` (H, W) float32
    metres on the model's device (NaN = no depth) and the colour camera's intrinsics.
    """

    z: torch.Tensor
    fx: float
    fy: float
    cx: float
    cy: float


class DepthObjectsModel(torch.nn.Module):
    """:func:`segment` behind torchvision's Mask R-CNN interface, so that the instance
    segmenter serves it like every instance model (ids, tracking, 3D, overlay).

    ``forward(images, depths, masks=True)``: one :class:`DepthFrame` (or None: no depth, no
    objects) per (3, H, W) image; per image a dict of ``boxes``, ``scores``, ``labels`` (all
    1, "object"), ``rows`` ((H, W) each pixel's object row, -1 none: the segmenter composes
    its id image from it) and, unless ``masks=False``, ``masks`` (N, 1, H, W) bool
    (thresholding them as torchvision's float masks gives them back). ``params`` can be
    replaced between frames.
    """

    #: the segmenter passes each frame's depth
    needs_depth = True

    def __init__(self, params: DepthObjectsParams = DepthObjectsParams(), seed: int = 0) -> None:
        super().__init__()
        self.params = params
        self.seed = int(seed)
        # the attribute the processor sets for every instance model
        self.roi_heads = SimpleNamespace(score_thresh=0.0)
        # where frames will come from (the segmenter moves the module: a buffer follows)
        self.register_buffer('_anchor', torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """The device the node runs the model on."""
        return self._anchor.device

    def warm_up(self) -> None:
        """:func:`warm_up` on the device of the frames to come (the node's warm-up)."""
        warm_up(self.device)

    def forward(self, images: Sequence[torch.Tensor],
                depths: Sequence[DepthFrame | None] | None = None, masks: bool = True
                ) -> list[dict[str, torch.Tensor]]:
        depths = list(depths) if depths is not None else [None] * len(images)
        out = []
        for image, d in zip(images, depths, strict=True):
            h, w = int(image.shape[-2]), int(image.shape[-1])
            if d is None:
                seg = _empty(h, w, image.device)
            else:
                # a fixed seed per frame: the same frame always gives the same objects
                gen = torch.Generator(device=d.z.device).manual_seed(self.seed)
                with cpu_threads(d.z.device, CPU_THREADS):
                    seg = segment(d.z, image, d.fx, d.fy, d.cx, d.cy, self.params, gen,
                                  masks=masks)
            n = seg.boxes.shape[0]
            item = {'boxes': seg.boxes, 'scores': seg.scores, 'rows': seg.rows,
                    'labels': torch.ones(n, dtype=torch.int64, device=seg.boxes.device)}
            if masks:
                item['masks'] = seg.masks[:, None]  # bool: no 4-byte copy per pixel
            out.append(item)
        return out


def warm_up(device: torch.device | str = 'cpu') -> None:
    """Run :func:`segment` once on a small generated table (a box carrying a box, a can
    beside it) on ``device``: on the CPU this compiles its loops (Numba, ~20 s the first
    time on this machine, then read from the cache beside the modules in ~0.1 s), which a
    node would otherwise pay on its first frame with depth.
    """
    dev = torch.device(device)
    h, w, f = 60, 80, 70.0
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                          torch.arange(w, dtype=torch.float32), indexing='ij')
    z = 0.8 + 0.004 * (v - h / 2)                       # a table seen a little tilted
    z[20:44, 20:46] = 0.72                              # a box
    z[26:38, 26:38] = 0.68                              # a box on it
    z[44:56, 55:66] = 0.74                              # a can beside it
    z[2:5, 2:5] = float('nan')                          # a hole
    z[0:24, 52:56] = 0.6                                # walls: a corner of table apart
    z[20:24, 52:80] = 0.6
    image = torch.zeros((3, h, w))
    for prm in (DepthObjectsParams(min_points=20, min_part=40),
                DepthObjectsParams(min_points=20, min_part=40, stride=3, color_edge=0.1)):
        segment(z.to(dev), image.to(dev), f, f, w / 2, h / 2, prm,
                torch.Generator(device=dev).manual_seed(0), masks=False)
    # an object on an object whose crease was lost: two tops in one segment
    lab = torch.full((40, 40), -1, dtype=torch.int64, device=dev)
    lab[10:30, 10:30] = 7
    height = torch.zeros((40, 40), device=dev)
    height[10:30, 10:30] = 0.05
    height[15:25, 15:25] = 0.1
    links = torch.ones((40, 40), dtype=torch.bool, device=dev)
    split_stacks(lab, height, height > 0, links, links, 0.0, 0.015, 10, 20)


def params_from(values) -> DepthObjectsParams:
    """:class:`DepthObjectsParams` from ``instance.depth_objects.*`` parameter values (a
    mapping or a Settings snapshot).
    """
    kw = {f.name: values[f'instance.depth_objects.{f.name}'] for f in fields(DepthObjectsParams)}
    return replace(DepthObjectsParams(), **kw)
