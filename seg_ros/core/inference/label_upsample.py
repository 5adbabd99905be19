"""The labels of bilinearly upsampled class scores without upsampling every class map.

A segmentation model's last steps upsample C maps of class scores (1/8 of the image for
LR-ASPP and DeepLabV3) to the image size and take the class maximum per pixel: for 21 classes
at 640x480, 6.4 M interpolated values and 20 compares each, a third of an int8 graph's time
(BENCHMARKS.md, "INT8 on the CPU"). The same labels come cheaper: a bilinear sample (with
align_corners=False, and any chain of such resizes) is a convex combination of the source
cells around it, and where those cells share their first maximum class, so does every
combination of them. Only pixels whose source window holds more than one class are
interpolated, over all classes; the rest take their window's class. Exact up to float
rounding of the interpolation (a near-tie can differ in the last bit). No rclpy.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3

from seg_ros.core.threads import cpu_threads

#: source windows wider than this fall back to upsampling every class map
MAX_WINDOW = 4
#: torch threads of the CPU's class maximum (~20 small kernels: with two threads each one
#: waited ~2-3 ms for the second to wake after the frame's idle gap; camvid's two resizes at
#: 640x480 with a 0.1 s gap before each call: 15.3 ms on two threads, 10.3 on one)
CPU_THREADS = 1


def has_coarse_scores(model: torch.nn.Module) -> bool:
    """True for the models :func:`coarse_scores` knows: torchvision's LR-ASPP, DeepLabV3 and
    FCN, whose forward ends in one bilinear upsample (align_corners=False) to the input size.
    """
    return isinstance(model, (LRASPP, DeepLabV3, FCN))


def coarse_scores(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's class scores before its final upsample to the input size (torchvision's
    forward without its last ``F.interpolate``; the auxiliary head is not run).
    """
    features = model.backbone(x)
    if isinstance(model, LRASPP):
        return model.classifier(features)
    return model.classifier(features['out'])


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64: torch's bilinear resize (align_corners=False, no antialias)
    along one axis, as a matrix (the resize of an identity).
    """
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode='bilinear', align_corners=False)[0, 0]


class _Axis:
    """One axis of a chain of resizes. Each output index reads a window of ``width`` source
    indices from ``first`` on (clamped to the axis; weights zero past its real sources).
    The outputs are cut into blocks of consecutive indices with the same window, at most
    the most common run long: block ``b`` starts at source ``src[b]`` and holds the outputs
    ``block[b]`` (-1 padded) with ``block_weights[b]`` (zero in the padding).
    """

    def __init__(self, sizes: Sequence[int], device: torch.device) -> None:
        n = sizes[0]
        m = torch.eye(n, dtype=torch.float64)
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            if a != b:
                m = resize_matrix(a, b) @ m
        nz = m != 0
        idx = torch.arange(n)
        first = torch.where(nz, idx, n).amin(1)      # non-decreasing along the axis
        last = torch.where(nz, idx, -1).amax(1)
        self.width = int((last - first).max()) + 1
        span = torch.arange(self.width)
        take = (first[:, None] + span).clamp_max(n - 1)
        w = torch.where(first[:, None] + span < n, m.gather(1, take), 0.0).float()
        runs = torch.bincount(first, minlength=n)
        size = max(1, int(torch.mode(runs[runs > 0]).values))
        src, block = [], []
        start = 0
        for i, run in enumerate(runs.tolist()):
            for b in range(start, start + run, size):
                src.append(i)
                block.append([o if o < start + run else -1 for o in range(b, b + size)])
            start += run
        block_t = torch.tensor(block, dtype=torch.int64)
        self.first = first.to(device)
        self.src = torch.tensor(src, dtype=torch.int64, device=device)
        self.block = block_t.to(device)                             # (blocks, size)
        self.block_weights = torch.where(                           # (blocks, size, width)
            block_t[..., None] >= 0, w[block_t.clamp_min(0)], 0.0).to(device)
        self.window = (torch.arange(n)[:, None] + span).clamp_max(n - 1).to(device)
        #: the source indices with the last one repeated width - 1 times
        self.edge = torch.arange(n + self.width - 1).clamp_max(n - 1).to(device)


class UpsampledMax:
    """``argmax(1)`` of (N, C, h, w) scores resized through ``sizes`` (each a bilinear,
    align_corners=False resize, as the model and the label graph chain them), computed
    without the full-size score maps.

    Args:
        sizes: (h, w) of the scores, then each size they are resized to in turn (the last is
            the image's).
        device: where the scores arrive.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], device: torch.device | str = 'cpu'
                 ) -> None:
        dev = torch.device(device)
        self.rows = _Axis([s[0] for s in sizes], dev)
        self.cols = _Axis([s[1] for s in sizes], dev)
        self.out_hw = tuple(sizes[-1])
        self.in_hw = tuple(sizes[0])
        #: False: the source windows are too wide (a long chain of resizes): every map is resized
        self.windowed = max(self.rows.width, self.cols.width) <= MAX_WINDOW
        self.sizes = [tuple(s) for s in sizes]

    def _full(self, scores: torch.Tensor) -> torch.Tensor:
        out = scores.float()
        for hw in self.sizes[1:]:
            if tuple(out.shape[-2:]) != hw:
                out = F.interpolate(out, size=hw, mode='bilinear', align_corners=False)
        return out.argmax(1).to(torch.uint8 if scores.shape[1] <= 256 else torch.int32)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, H, W) labels (ties: the lower class) of (N, C, h, w) scores: uint8 up to 256
        classes, else int32.
        """
        if tuple(scores.shape[-2:]) != self.in_hw:
            raise ValueError(f'scores of {tuple(scores.shape[-2:])}, expected {self.in_hw}')
        if not self.windowed:
            return self._full(scores)
        with cpu_threads(scores.device, CPU_THREADS):
            return torch.stack([self._one(s.float()) for s in scores])

    def _one(self, s: torch.Tensor) -> torch.Tensor:
        r, c = self.rows, self.cols
        cls = s.argmax(0)                                   # (h, w) first maximum
        small = cls.to(torch.uint8 if s.shape[0] <= 256 else torch.int32)
        out = small.index_select(0, r.first).index_select(1, c.first)
        # the source windows (rows first .. first + width - 1, the same for columns) that
        # hold more than one class (slices, not pooling: small tensors, few kernels)
        h, w = cls.shape
        pad = cls.index_select(0, r.edge).index_select(1, c.edge)   # edges repeated
        mixed = torch.zeros_like(cls, dtype=torch.bool)
        for i in range(r.width):
            for j in range(c.width):
                if i or j:
                    mixed |= pad[i:i + h, j:j + w] != cls
        if not bool(mixed.any()):
            return out
        # there, every class interpolated over the blocks of output pixels that read the
        # window, separably: along the columns, then along the rows (two batched products)
        bi, bj = torch.nonzero(mixed[r.src][:, c.src], as_tuple=True)
        qi, qj = r.src[bi], c.src[bj]
        n_cls, q = s.shape[0], bi.numel()
        win = s[:, r.window[qi][:, :, None], c.window[qj][:, None, :]]   # (C, Q, wr, wc)
        win = win.permute(1, 3, 2, 0).reshape(q, c.width, r.width * n_cls)
        by, bx = r.block[bi], c.block[bj]
        cols = torch.bmm(c.block_weights[bj], win)                        # (Q, bx, wr*C)
        cols = cols.view(q, -1, r.width, n_cls).transpose(1, 2).reshape(q, r.width, -1)
        vals = torch.bmm(r.block_weights[bi], cols)                       # (Q, by, bx*C)
        best = vals.view(q, -1, n_cls).argmax(-1).to(out.dtype)           # (Q, by*bx)
        ok = ((by >= 0)[:, :, None] & (bx >= 0)[:, None, :]).flatten(1)
        at = (by[:, :, None] * self.out_hw[1] + bx[:, None, :]).flatten(1)
        out.view(-1)[at[ok]] = best[ok]
        return out
