"""Labelling on the organised grid of :mod:`seg_ros.core.spatial.depth_objects`: connected
components whose neighbours join only along allowed links, the fills that give cut cells a
neighbour's label, the closing of gaps in cut bands, and the labels at the image's size
(upsampled as a nearest resize, each pixel's own height checked, rows and boxes).
Vectorised in torch on the device; on the CPU compiled loops (:mod:`.kernels`, the same
results; without Numba SciPy's labelling and the torch code). No rclpy.
"""
from __future__ import annotations

import numpy as np
import torch

try:  # the CPU's connected components (a dependency of the package; CUDA does not need it)
    from scipy import ndimage
except ImportError:  # pragma: no cover
    ndimage = None

from seg_ros.core import compiled
from seg_ros.core.spatial.kernels import labels as klabels
from seg_ros.core.spatial.kernels import masks as kmasks
from seg_ros.core.spatial.organised_cloud import shift


def connected_components(active: torch.Tensor, link_right: torch.Tensor,
                         link_down: torch.Tensor, max_iter: int = 2000) -> torch.Tensor:
    """Labels (h, w) int64 of the 4-connected components of ``active`` cells, where two
    neighbours connect only when ``link_right[i, j]`` (cell (i, j) with (i, j + 1)) /
    ``link_down[i, j]`` (with (i + 1, j)) is set. Inactive cells get -1; a component's label
    is the smallest flat index of its cells.

    On the CPU a compiled union-find over the links
    (:mod:`seg_ros.core.spatial.kernels.labels`; without Numba, SciPy's labelling on a grid
    with the links as pixels between the cells); elsewhere (CUDA) min-label propagation with
    pointer jumping on the device. All give the same labels (tested).
    """
    if active.device.type == 'cpu' and compiled.AVAILABLE:
        return torch.from_numpy(klabels.components(
            active.numpy(), link_right.numpy(), link_down.numpy()))
    lr = link_right & active & shift(active, 0, 1, False)
    ld = link_down & active & shift(active, 1, 0, False)
    if active.device.type == 'cpu' and ndimage is not None:
        return _components_scipy(active, lr, ld)
    return _components_propagate(active, lr, ld, max_iter)


def _components_scipy(active: torch.Tensor, lr: torch.Tensor, ld: torch.Tensor
                      ) -> torch.Tensor:
    h, w = active.shape
    grid = np.zeros((2 * h - 1, 2 * w - 1), dtype=bool)  # cells at even, links at odd places
    grid[::2, ::2] = active.numpy()
    grid[::2, 1::2] = lr[:, :-1].numpy()
    grid[1::2, ::2] = ld[:-1, :].numpy()
    comp, n = ndimage.label(grid)  # 4-connectivity; 1..n in raster order
    comp = torch.from_numpy(comp[::2, ::2].astype(np.int64))
    flat = torch.arange(h * w).view(h, w)
    first = torch.full((n + 1,), h * w, dtype=torch.int64)
    first.scatter_reduce_(0, comp.flatten(), flat.flatten(), reduce='amin')
    first[0] = -1
    return first[comp]


def _components_propagate(active: torch.Tensor, lr: torch.Tensor, ld: torch.Tensor,
                          max_iter: int) -> torch.Tensor:
    h, w = active.shape
    dev = active.device
    big = h * w
    idx = torch.arange(h * w, device=dev).view(h, w)
    lab = torch.where(active, idx, big)
    ll = shift(lr, 0, -1, False)  # link to the left neighbour
    lu = shift(ld, -1, 0, False)
    for _ in range(max_iter):
        new = lab
        new = torch.minimum(new, torch.where(lr, shift(lab, 0, 1, big), big))
        new = torch.minimum(new, torch.where(ll, shift(lab, 0, -1, big), big))
        new = torch.minimum(new, torch.where(ld, shift(lab, 1, 0, big), big))
        new = torch.minimum(new, torch.where(lu, shift(lab, -1, 0, big), big))
        flat = torch.cat([new.flatten(), torch.tensor([big], device=dev)])
        for _ in range(3):  # pointer jumping: label of my label
            flat = torch.minimum(flat, flat[flat])
        # hook: a root takes the smallest label pointing at it (parents follow children)
        nf = flat[:-1]
        roots = torch.full((big + 1,), big, dtype=torch.int64, device=dev)
        roots.scatter_reduce_(0, lab.flatten(), nf, reduce='amin')
        nf = torch.minimum(nf, roots[nf])
        nf = torch.where(active.flatten(), nf, big).view(h, w)
        if torch.equal(nf, lab):
            break
        lab = nf
    return torch.where(active, lab, -1)


def fill(lab: torch.Tensor, can: torch.Tensor, link: tuple[torch.Tensor, ...],
          steps: int) -> torch.Tensor:
    """Unlabelled cells of ``can`` take a labelled neighbour's label (the smallest), for
    ``steps`` rounds, along allowed links (right, left, down, up). Works on the list of
    unlabelled cells only (a few thousand of a grid's 77k); on the CPU a compiled loop
    (:mod:`seg_ros.core.spatial.kernels.labels`, the same result).
    """
    if lab.device.type == 'cpu' and compiled.AVAILABLE:
        return torch.from_numpy(klabels.fill(
            lab.numpy(), can.numpy(), *(x.numpy() for x in link), steps))
    h, w = lab.shape
    big = torch.iinfo(torch.int64).max   # above every label (split_stacks' go past numel)
    cells = torch.nonzero(((lab < 0) & can).flatten()).flatten()
    if cells.numel() == 0:
        return lab
    row, col = cells // w, cells % w
    inside = (col < w - 1, col > 0, row < h - 1, row > 0)
    nbs, oks = [], []
    for off, ok, ins in zip((1, -1, w, -w), link, inside, strict=True):
        nbs.append(torch.where(ins, cells + off, cells))
        oks.append(ok.flatten()[cells] & ins)
    nb = torch.stack(nbs)      # (4, F) neighbour of each unlabelled cell
    ok = torch.stack(oks)
    flat = lab.flatten().clone()
    for _ in range(steps):
        nlab = torch.where(ok, flat[nb], -1)
        nlab = torch.where(nlab >= 0, nlab, big)
        cand = torch.minimum(torch.minimum(nlab[0], nlab[1]), torch.minimum(nlab[2], nlab[3]))
        mine = flat[cells]
        take = (mine < 0) & (cand < big)
        if not bool(take.any()):
            break
        flat[cells] = torch.where(take, cand, mine)
    return flat.view(h, w)


def grown(mask: torch.Tensor, r: int = 1) -> torch.Tensor:
    """``mask`` grown by ``r`` cells (a (2r + 1)-square): separable ORs of shifted slices
    (boolean, ~5x faster than a max pool over floats on a 320x240 grid).
    """
    if mask.device.type == 'cpu' and compiled.AVAILABLE:
        return torch.from_numpy(klabels.grown(mask.numpy(), r))
    h, w = mask.shape
    out = mask.clone()
    for d in range(1, r + 1):                  # along the rows: out covers +-d columns
        if d < w:
            out[:, d:] |= mask[:, :-d]
            out[:, :-d] |= mask[:, d:]
    rows = out.clone()
    for d in range(1, r + 1):
        if d < h:
            out[d:] |= rows[:-d]
            out[:-d] |= rows[d:]
    return out


def grown4(mask: torch.Tensor, outside: bool = False) -> torch.Tensor:
    """``mask`` and its cells' four neighbours; beyond the grid's border counts as
    ``outside`` (True: the border cells' missing neighbours are in the mask).
    """
    return mask | shift(mask, 0, 1, outside) | shift(mask, 1, 0, outside) | \
        shift(mask, 0, -1, outside) | shift(mask, -1, 0, outside)


def labels_in(seg: torch.Tensor, nseg: int, cells: torch.Tensor) -> torch.Tensor:
    """(nseg,) bool: has label j (of ``seg``, 0..nseg-1, -1 none) a cell in ``cells``?"""
    if seg.device.type == 'cpu' and compiled.AVAILABLE:
        return torch.from_numpy(klabels.labels_in(seg.numpy(), nseg, cells.numpy()))
    return torch.bincount((seg[cells] + 1), minlength=nseg + 1)[1:] > 0


def close_gaps(lab: torch.Tensor, core: torch.Tensor, link_r: torch.Tensor,
                link_down: torch.Tensor, min_cells: int) -> torch.Tensor:
    """Components of ``core`` (the object cells off the cut bands grown by a cell), where a
    gap of a cell or two in a crease band no longer joins two objects (a box on a box
    leaked into one through the ends of the crease between them). Growing the bands also
    breaks small fragments off an object where noise makes creases: a part smaller than
    ``min_cells`` rejoins the largest part of its component in ``lab`` (the components of
    the ungrown cut); cells only the grown bands hold become unlabelled (-1, filled later).
    """
    lab1 = connected_components(core, link_r, link_down)
    if lab.device.type == 'cpu' and compiled.AVAILABLE:
        return torch.from_numpy(klabels.rejoin_small(lab.numpy(), lab1.numpy(),
                                                          min_cells))
    on = lab1 >= 0
    if not bool(on.any()):
        return lab1
    dev = lab.device
    parts, inv = torch.unique(lab1[on], return_inverse=True)
    area = torch.bincount(inv)
    host = torch.zeros_like(parts).scatter_reduce(0, inv, lab[on], 'amax', include_self=False)
    # per host component its largest part (ties: the smallest label)
    big = lab.numel() + 1
    key = area * big + (big - 1 - parts)
    best = torch.zeros(big, dtype=torch.int64, device=dev).scatter_reduce(
        0, host, key, 'amax', include_self=False)
    largest = (big - 1) - best[host] % big
    out = torch.full_like(lab, -1)
    out[on] = torch.where(area < min_cells, largest, parts)[inv]
    return out


def nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """The source index of each of ``n_out`` outputs of a nearest resize from ``n_in``, as
    ``F.interpolate(mode='nearest')`` takes it (float32 scale, floor, clamped).
    """
    if n_in == n_out:
        return torch.arange(n_out, device=device)
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    idx = torch.floor(torch.arange(n_out, dtype=torch.float32) * scale).long()
    return idx.clamp_max(n_in - 1).to(device)


def upsampled(grid: torch.Tensor, s: int, h_out: int, w_out: int) -> torch.Tensor:
    """The (h, w) ``grid`` of every ``s``-th pixel back at (h_out, w_out), as
    ``F.interpolate(mode='nearest')`` resizes it.
    """
    h, w = grid.shape
    if (h * s, w * s) == (h_out, w_out) and s & (s - 1) == 0:
        # each cell an s x s block (the nearest resize when 1 / s is exact): one copy
        return grid[:, None, :, None].expand(h, s, w, s).reshape(h_out, w_out)
    return grid.index_select(0, nearest_index(h, h_out, grid.device)).index_select(
        1, nearest_index(w, w_out, grid.device))


def at_full_resolution(seg: torch.Tensor, nseg: int, s: int, z: torch.Tensor,
                       plane: torch.Tensor, fx: float, fy: float, cx: float, cy: float,
                       min_h: float, min_points: int, drop: torch.Tensor, scores: torch.Tensor,
                       fast: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The kept segments' order (best score first, then area), each pixel's row in it (H, W)
    (int16; int32 beyond 32767 rows; -1 none) and their (N, 4) xyxy boxes; None without any.

    Args:
        seg: (h, w) grid labels 0..nseg-1 (-1 none) of every ``s``-th pixel of ``z``.
        z: (H, W) float32 depth (m); a pixel without depth (NaN, or with ``fast`` not
            finite or not positive) keeps its segment.
        plane: (4,) the support (n, d): height = z (n . ray) + d, the ray
            ((u - cx) / fx, (v - cy) / fy, 1).
        min_h: the object threshold (m); min_points: pixels a segment needs; drop: (nseg,)
            segments dropped whatever their size; scores: (nseg,).
        fast: the CPU's compiled passes.
    """
    h_full, w_full = z.shape
    h, w = seg.shape
    dev = z.device
    v = torch.arange(h_full, device=dev, dtype=torch.float32)
    u = torch.arange(w_full, device=dev, dtype=torch.float32)
    row_term, col_term = plane[1] * (v - cy) / fy, plane[0] * (u - cx) / fx + plane[2]
    if fast:
        # the same in two compiled passes over the image (~0.5 ms against ~4)
        up, areas = kmasks.full_labels(
            seg.int().numpy(), nearest_index(h, h_full, dev).numpy(),
            nearest_index(w, w_full, dev).numpy(), z.numpy(), row_term.numpy(),
            col_term.numpy(), plane[3].numpy()[()], np.float32(min_h), nseg)
        areas = torch.from_numpy(areas)
        keep = torch.nonzero((areas >= min_points) & ~drop).flatten()
        if keep.numel() == 0:
            return None
        order = keep[torch.argsort(scores[keep] * 1e7 + areas[keep].float(), descending=True)]
        n_out = order.numel()
        small_t = torch.int16 if n_out < 2**15 else torch.int32
        row = torch.full((nseg,), -1, dtype=torch.int64)
        row[order] = torch.arange(n_out)
        small = torch.empty((h_full, w_full), dtype=small_t)
        boxes = torch.from_numpy(kmasks.rows_and_boxes(
            up, row.numpy(), n_out, small.numpy())).float()
    else:
        up = upsampled(seg.int(), s, h_full, w_full)
        up.masked_fill_(z * (row_term[:, None] + col_term[None, :]) + plane[3] < min_h, -1)
        up1 = (up + 1).flatten()                  # 0: no segment
        areas = torch.bincount(up1, minlength=nseg + 1)[1:]
        keep = torch.nonzero((areas >= min_points) & ~drop).flatten()
        if keep.numel() == 0:
            return None
        order = keep[torch.argsort(scores[keep] * 1e7 + areas[keep].float(), descending=True)]
        # each pixel's row in ``order`` (-1: none), then the boxes in one pass over the image
        small_t = torch.int16 if order.numel() < 2**15 else torch.int32
        row = torch.full((nseg + 1,), -1, dtype=small_t, device=dev)
        row[order + 1] = torch.arange(order.numel(), device=dev, dtype=small_t)
        small = row.index_select(0, up1).view(h_full, w_full)
        on = (small >= 0).flatten()
        which = small.flatten()[on].long()
        flat = torch.nonzero(on).flatten()
        xs, ys = flat % w_full, flat // w_full
        n_out = order.numel()
        boxes = torch.stack([
            torch.full((n_out,), w_full, device=dev).scatter_reduce(0, which, xs, 'amin'),
            torch.full((n_out,), h_full, device=dev).scatter_reduce(0, which, ys, 'amin'),
            torch.full((n_out,), -1, device=dev).scatter_reduce(0, which, xs, 'amax') + 1,
            torch.full((n_out,), -1, device=dev).scatter_reduce(0, which, ys, 'amax') + 1,
        ], 1).float()
    return order, small, boxes
