"""The surface on the organised grid of :mod:`seg_ros.core.spatial.depth_objects`, compiled
for the CPU: the smoothed points and their normals, concave creases, depth steps, which
neighbours lie near in depth, and the table's outline on its plane
(:mod:`seg_ros.core.spatial.resting`). Each the same result as the torch code beside its
caller (normals: to the last bit of a square root; tested); no rclpy.
"""
from __future__ import annotations

import numpy as np

from seg_ros.core import compiled
from seg_ros.core.spatial.kernels.labels import grown


@compiled.jit
def _box_rows(x, r):
    """Sums over windows of 2r + 1 along each row of (h, w) ``x``, in the order the torch
    code adds them (the cell, then -1, +1, -2, +2, ...: float32 sums equal bit for bit).
    """
    h, w = x.shape
    out = x.copy()
    for i in range(h):
        for d in range(1, min(r, w - 1) + 1):
            for j in range(d, w):
                out[i, j] += x[i, j - d]
            for j in range(w - d):
                out[i, j] += x[i, j + d]
    return out


@compiled.jit
def _box_cols(x, r):
    """:func:`_box_rows` down the columns."""
    h, w = x.shape
    out = x.copy()
    for d in range(1, r + 1):
        for i in range(h):
            if i - d >= 0:
                for j in range(w):
                    out[i, j] += x[i - d, j]
            if i + d < h:
                for j in range(w):
                    out[i, j] += x[i + d, j]
    return out


@compiled.jit
def smoothed_points(z, s, fx, fy, cx, cy, win, min_share):
    """The grid of every ``s``-th pixel of ``z`` (H, W) float32 metres: its depth ``zs``
    (0 where none) and validity ``ok``; the depth's masked mean over ``win`` x ``win``
    cells, valid (``okm``) where at least ``min_share`` of the window's in-image cells have
    depth; and the (3, h, w) points of the smoothed depth (0 where not ``okm``). All float32
    arguments and arithmetic, in the torch code's order.
    """
    hh, ww = z.shape
    h, w = (hh + s - 1) // s, (ww + s - 1) // s
    zs = np.zeros((h, w), np.float32)
    ok = np.zeros((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            v = z[i * s, j * s]
            if np.isfinite(v) and v > 0:
                zs[i, j] = v
                ok[i, j] = True
    r = win // 2
    cnt = ok.astype(np.float32)
    # separable: along the rows first, then the columns
    sm = _box_cols(_box_rows(zs, r), r)
    cn = _box_cols(_box_rows(cnt, r), r)
    okm = np.zeros((h, w), np.bool_)
    p = np.zeros((3, h, w), np.float32)
    tiny = np.float32(1e-6)
    for i in range(h):
        row = np.float32(i) * np.float32(s) - cy
        rows_in = np.float32(min(i + r, h - 1) - max(i - r, 0) + 1)
        for j in range(w):
            # the window's cells inside the grid (a sum of ones in float32: exact)
            inside = rows_in * np.float32(min(j + r, w - 1) - max(j - r, 0) + 1)
            share = cn[i, j] / inside
            if ok[i, j] and share > min_share:
                okm[i, j] = True
                zz = sm[i, j] / max(cn[i, j], tiny)
                p[0, i, j] = (np.float32(j) * np.float32(s) - cx) * zz / fx
                p[1, i, j] = row * zz / fy
                p[2, i, j] = zz
    return zs, ok, okm, p


@compiled.jit
def normals(p, ok, k):
    """Unit normals (3, h, w) towards the camera from central differences at +-k of the
    points ``p`` (beyond the border: 0), and where they are defined (``ok`` at the cell and
    its four neighbours at k, a non-zero cross product). float32, in the torch code's order.
    """
    _, h, w = p.shape
    n = np.zeros((3, h, w), np.float32)
    good = np.zeros((h, w), np.bool_)
    zero = np.float32(0.0)
    tiny = np.float32(1e-12)
    for i in range(h):
        for j in range(w):
            jr, jl, id_, iu = j + k < w, j - k >= 0, i + k < h, i - k >= 0
            x0 = (p[0, i, j + k] if jr else zero) - (p[0, i, j - k] if jl else zero)
            x1 = (p[1, i, j + k] if jr else zero) - (p[1, i, j - k] if jl else zero)
            x2 = (p[2, i, j + k] if jr else zero) - (p[2, i, j - k] if jl else zero)
            y0 = (p[0, i + k, j] if id_ else zero) - (p[0, i - k, j] if iu else zero)
            y1 = (p[1, i + k, j] if id_ else zero) - (p[1, i - k, j] if iu else zero)
            y2 = (p[2, i + k, j] if id_ else zero) - (p[2, i - k, j] if iu else zero)
            n0 = x1 * y2 - x2 * y1
            n1 = x2 * y0 - x0 * y2
            n2 = x0 * y1 - x1 * y0
            norm = np.sqrt(n0 * n0 + n1 * n1 + n2 * n2)
            good[i, j] = ok[i, j] and jr and ok[i, j + k] and jl and ok[i, j - k] and \
                id_ and ok[i + k, j] and iu and ok[i - k, j] and norm > 0
            m = max(norm, tiny)
            n0, n1, n2 = n0 / m, n1 / m, n2 / m
            if n0 * p[0, i, j] + n1 * p[1, i, j] + n2 * p[2, i, j] > 0:
                n0, n1, n2 = -n0, -n1, -n2
            n[0, i, j] = n0
            n[1, i, j] = n1
            n[2, i, j] = n2
    return n, good


@compiled.jit
def creases(n, p, good, k, cos_c, near):
    """Concave creases (h, w) bool: cells whose neighbours k cells either side (across the
    columns, the rows and both diagonals) both have normals, turned towards each other
    (``((na - nb) . (pa - pb)) < 0``) by more than the angle of ``cos_c`` (float32).
    Looked for only at the cells within one cell (8-neighbours) of ``near`` (the caller's
    object cells: elsewhere a crease changes nothing); False elsewhere.
    """
    _, h, w = n.shape
    out = np.zeros((h, w), np.bool_)
    near1 = grown(near, 1)
    for i in range(h):
        for j in range(w):
            if not near1[i, j]:
                continue
            for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):
                ia, ja, ib, jb = i - k * di, j - k * dj, i + k * di, j + k * dj
                if ia < 0 or ib >= h or min(ja, jb) < 0 or max(ja, jb) >= w:
                    continue
                if not (good[ia, ja] and good[ib, jb]):
                    continue
                conc = (n[0, ia, ja] - n[0, ib, jb]) * (p[0, ia, ja] - p[0, ib, jb]) + \
                    (n[1, ia, ja] - n[1, ib, jb]) * (p[1, ia, ja] - p[1, ib, jb]) + \
                    (n[2, ia, ja] - n[2, ib, jb]) * (p[2, ia, ja] - p[2, ib, jb])
                if conc >= 0:
                    continue
                dot = n[0, ia, ja] * n[0, ib, jb] + n[1, ia, ja] * n[1, ib, jb] + \
                    n[2, ia, ja] * n[2, ib, jb]
                if dot < cos_c:
                    out[i, j] = True
                    break
    return out


@compiled.jit
def _beside(v, dd, spur):
    """A step beside the step ``dd`` as :func:`jumps` weighs it: 0 where it steps back
    beside a spur (a silhouette's staircase) or is missing, else its size.
    """
    if (v * dd < 0 and spur) or np.isnan(v):
        return np.float32(0.0)
    return abs(v)


@compiled.jit
def jumps(z, dy, dx, rel, spur_step):
    """:func:`seg_ros.core.spatial.depth_objects._jumps` (the same rule, float32): depth
    steps from each cell to its neighbour (dy, dx), a missing neighbour (beyond the image)
    a step.
    """
    h, w = z.shape
    nan = np.float32(np.nan)
    zero = np.float32(0.0)
    d = np.empty((h, w), np.float32)
    for i in range(h):
        for j in range(w):
            ii, jj = i + dy, j + dx
            if 0 <= ii < h and 0 <= jj < w:
                d[i, j] = z[ii, jj] - z[i, j]
            else:
                d[i, j] = nan
    out = np.empty((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            dd = d[i, j]
            if np.isnan(dd):
                out[i, j] = True
                continue
            ad = abs(dd)
            spur = ad > spur_step * z[i, j]
            ib, jb, ia, ja = i - dy, j - dx, i + dy, j + dx
            before = d[ib, jb] if 0 <= ib < h and 0 <= jb < w else zero
            after = d[ia, ja] if 0 <= ia < h and 0 <= ja < w else zero
            big = ad > rel * z[i, j]
            lone = ad > np.float32(1.5) * max(_beside(before, dd, spur),
                                               _beside(after, dd, spur))
            out[i, j] = big and lone
    return out


@compiled.jit
def near_links(z, ok, gap):
    """Links (right, down) (h, w) bool between neighbouring cells that both have depth
    (``ok``) at most ``gap`` (float32) apart in ``z``.
    """
    h, w = z.shape
    right = np.zeros((h, w), np.bool_)
    down = np.zeros((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            if not ok[i, j]:
                continue
            if j + 1 < w and ok[i, j + 1] and abs(z[i, j + 1] - z[i, j]) <= gap:
                right[i, j] = True
            if i + 1 < h and ok[i + 1, j] and abs(z[i + 1, j] - z[i, j]) <= gap:
                down[i, j] = True
    return right, down


@compiled.jit
def touching(seg, nseg, z, ok, gap):
    """(nseg, nseg) bool: segments with neighbouring cells (4-neighbours) that both have
    depth at most ``gap`` (float32) apart.
    """
    h, w = seg.shape
    out = np.zeros((nseg, nseg), np.bool_)
    for i in range(h):
        for j in range(w):
            a = seg[i, j]
            if a < 0 or not ok[i, j]:
                continue
            for dy, dx in ((0, 1), (1, 0)):
                ii, jj = i + dy, j + dx
                if ii >= h or jj >= w:
                    continue
                b = seg[ii, jj]
                if b >= 0 and b != a and ok[ii, jj] and abs(z[ii, jj] - z[i, j]) <= gap:
                    out[a, b] = True
                    out[b, a] = True
    return out


@compiled.jit
def hull_reach(p, part, dirs):
    """Per direction (K, 3) the largest projection of ``part``'s outline points (cells of
    ``part`` with a 4-neighbour outside it or at the grid's border) onto it, float32; -inf
    without such cells.
    """
    _, h, w = p.shape
    nd = dirs.shape[0]
    reach = np.full(nd, -np.inf, np.float32)
    for i in range(h):
        for j in range(w):
            if not part[i, j]:
                continue
            if 0 < i < h - 1 and 0 < j < w - 1 and part[i - 1, j] and part[i + 1, j] and \
                    part[i, j - 1] and part[i, j + 1]:
                continue
            for t in range(nd):
                v = dirs[t, 0] * p[0, i, j] + dirs[t, 1] * p[1, i, j] + dirs[t, 2] * p[2, i, j]
                if v > reach[t]:
                    reach[t] = v
    return reach


@compiled.jit
def in_hull(p, cells, dirs, limit):
    """Which ``cells`` project onto every direction (K, 3) at most ``limit`` (K,)."""
    _, h, w = p.shape
    nd = dirs.shape[0]
    out = np.zeros((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            if not cells[i, j]:
                continue
            inside = True
            for t in range(nd):
                v = dirs[t, 0] * p[0, i, j] + dirs[t, 1] * p[1, i, j] + dirs[t, 2] * p[2, i, j]
                if v > limit[t]:
                    inside = False
                    break
            out[i, j] = inside
    return out
