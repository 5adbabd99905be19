"""Height layers on the organised grid of :mod:`seg_ros.core.spatial.depth_objects`: an object
standing on another, split at the lower one's top where the crease between them was lost.
Vectorised in torch (the same code on CUDA). No rclpy.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from seg_ros.core import compiled
from seg_ros.core.spatial.grid_labels import connected_components
from seg_ros.core.spatial.kernels import labels as klabels
from seg_ros.core.spatial.organised_cloud import shift

#: height bins of the layer histograms (m)
BIN = 0.005
#: a cell faces up when its normal is within this many degrees of the support's
UP_TILT = 15.0
#: a lower layer lies at least this high above the support (m): the top of an object that
#: carries another, not the support's own fringe
LOW_MIN = 0.012
#: the upper layer holds at least this share of its segment's upward-facing cells, the lower
#: at least LOW_SHARE: a box on a slightly larger box, seen from above, leaves only a thin rim
#: of the lower top in view (46 cells against 7955 on one held-out table)
SHARE = 0.1
LOW_SHARE = 0.005
#: ... and layers lie at least this many sigmas of the depth noise apart
NOISE_SIGMAS = 10.0
#: the upper layer's cells against the area of the ellipse of their second moments: a box's or
#: a can's top (a filled rectangle or disc: ~1 at any orientation) passes, a bowl's or a
#: mug's rim (a thin ring) does not
COMPACT = 0.4


def split_stacks(lab: torch.Tensor, height: torch.Tensor, up: torch.Tensor,
                 link_r: torch.Tensor, link_d: torch.Tensor, sigma: float, gap: float,
                 min_cells: int, min_part: int) -> torch.Tensor:
    """``lab`` with each segment that holds an object standing on another cut in two.

    A segment's upward-facing cells (``up``) form layers in height (``BIN`` histograms, a
    layer at least ``min_cells`` cells and ``SHARE`` of them, the lowest one ``LOW_SHARE``):
    when its lowest layer lies ``LOW_MIN`` or more above the support, its highest at least
    ``gap`` (and ``NOISE_SIGMAS`` sigmas) above that layer's fullest of three bins, and the
    highest is a compact patch (``COMPACT``), the cells higher than the lower layer (plus
    half that noise margin) become a new segment per connected part of at least
    ``min_part`` cells (smaller parts: noise on a face that straddles the cut height, they
    stay). Where a crease between a box and the box it stands on is lost (a short side face
    seen from above, normals blurred across it), their tops still lie at two heights.

    ``lab``: (h, w) labels that are flat cell indices (as :func:`connected_components` gives
    them), -1 for none. The new segments' labels are flat cell indices plus
    ``2 * lab.numel()``, never one of ``lab``'s.
    """
    if gap <= 0:
        return lab
    need = max(gap, NOISE_SIGMAS * sigma)
    margin = max(BIN, 0.5 * NOISE_SIGMAS * sigma)
    if lab.device.type == 'cpu' and compiled.AVAILABLE:   # the same, compiled
        f32 = np.float32
        cut, any_cut = klabels.stack_cuts(
            lab.numpy(), height.numpy(), up.numpy(), min_cells, f32(BIN), f32(SHARE),
            f32(LOW_SHARE), round(LOW_MIN / BIN), round(need / BIN), COMPACT, f32(margin))
        if not any_cut:
            return lab
        return torch.from_numpy(klabels.stack_split(
            lab.numpy(), height.numpy(), cut, link_r.numpy(), link_d.numpy(), min_part))
    dev = lab.device
    n = lab.numel()
    h, w = lab.shape
    flat_lab = lab.flatten()
    cells = torch.nonzero((up & (lab >= 0)).flatten()).flatten()   # upward-facing, labelled
    if cells.numel() < 2 * min_cells:
        return lab
    # only segments with enough upward-facing cells for two layers, each a slot in a short
    # histogram table (labels are flat cell indices: no unique needed); all on the cell list
    lf = flat_lab[cells]
    per = torch.bincount(lf, minlength=n)
    many = torch.nonzero(per >= 2 * min_cells).flatten()
    if many.numel() == 0:
        return lab
    ns = many.numel()
    slot = torch.full((n,), -1, dtype=torch.int64, device=dev)
    slot[many] = torch.arange(ns, device=dev)
    sf = slot[lf]
    mine = sf >= 0
    cells, sf = cells[mine], sf[mine]
    hf = height.flatten()[cells]
    nb = int(hf.amax().clamp(0, 3.0) / BIN) + 3
    hb = (hf / BIN).floor().clamp(0, nb - 1).long()
    counts = torch.bincount(sf * nb + hb, minlength=ns * nb).view(ns, nb)
    win = counts.clone()                          # a layer: three bins' worth of cells
    win[:, 1:] += counts[:, :-1]
    win[:, :-1] += counts[:, 1:]
    layer = (win >= min_cells) & (counts > 0)
    total = counts.sum(1, keepdim=True)
    ar = torch.arange(nb, device=dev)
    low = torch.where(layer & (win >= LOW_SHARE * total), ar, nb).amin(1)
    high = torch.where(layer & (win >= SHARE * total), ar, -1).amax(1)
    # the lower layer's height: its fullest bin of the three from its lowest one (below the
    # upper layer), not the lowest, which may hold only the blurred edge of its top
    peak = low
    for o in (1, 2):
        b = low + o
        fuller = counts.gather(1, b.clamp(max=nb - 1)[:, None])[:, 0] > \
            counts.gather(1, peak.clamp(max=nb - 1)[:, None])[:, 0]
        peak = torch.where((b < high) & fuller, b, peak)
    cand = (high - peak >= round(need / BIN)) & (low >= round(LOW_MIN / BIN))
    low = peak
    if not bool(cand.any()):
        return lab
    # the upper layer a compact patch: its cells against its second moments' ellipse
    top = cand[sf] & ((hb - high[sf]).abs() <= 1)
    idx = sf[top]
    rows = (cells[top] // w).double()
    cols = (cells[top] % w).double()
    cnt = torch.bincount(idx, minlength=ns).double().clamp_min(1)
    mr = torch.bincount(idx, rows, minlength=ns) / cnt
    mc = torch.bincount(idx, cols, minlength=ns) / cnt
    vr = torch.bincount(idx, rows * rows, minlength=ns) / cnt - mr * mr
    vc = torch.bincount(idx, cols * cols, minlength=ns) / cnt - mc * mc
    vrc = torch.bincount(idx, rows * cols, minlength=ns) / cnt - mr * mc
    ellipse = 4 * math.pi * (vr * vc - vrc * vrc).clamp_min(0).sqrt()
    cand &= cnt >= COMPACT * ellipse
    if not bool(cand.any()):
        return lab
    # every cell of a cut segment above its lower layer's top (+ half the noise margin)
    cut = torch.full((n + 1,), math.inf, device=dev)   # index n: no segment (label -1)
    cut[many[cand]] = (low[cand].float() + 1) * BIN + margin
    upper = height > cut[torch.where(lab >= 0, lab, n)]
    # the upper cells as connected parts (along the links, one label each); small ones stay
    lab2 = torch.where(upper, lab + n, lab)
    same_r = lab2 == shift(lab2, 0, 1, -2)
    same_d = lab2 == shift(lab2, 1, 0, -2)
    parts = connected_components(upper, link_r & same_r, link_d & same_d)
    area = torch.bincount(parts[upper], minlength=n)
    keep = upper & (area[parts.clamp_min(0)] >= min_part)
    return torch.where(keep, parts + 2 * n, lab)

