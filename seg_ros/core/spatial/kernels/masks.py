"""The segments of :mod:`seg_ros.core.spatial.depth_objects` scored and brought to full
resolution, compiled for the CPU: each segment's outline (clean, shared), the pixels' labels
with their own height checked, each pixel's row and the boxes. Each the same result as the
torch code beside its caller (tested); no rclpy.
"""
from __future__ import annotations

import numpy as np

from seg_ros.core import compiled


@compiled.jit
def outline_counts(seg, nseg, jump_r, jump_d, height, okm, rise, out):
    """Per segment (labels 0..nseg-1 of ``seg``, -1 none) its outline sides (``total``),
    the clean ones (off every segment where the cell rises ``rise`` (float32) above the
    surface ``out`` cells further out, or across a depth step) and those shared with another
    segment across no step: three (nseg,) int64 arrays.
    """
    h, w = seg.shape
    total = np.zeros(nseg, np.int64)
    clean = np.zeros(nseg, np.int64)
    shared = np.zeros(nseg, np.int64)
    for i in range(h):
        for j in range(w):
            s = seg[i, j]
            if s < 0:
                continue
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                ii, jj = i + dy, j + dx
                inside = 0 <= ii < h and 0 <= jj < w
                nb = seg[ii, jj] if inside else -1
                if nb == s:
                    continue
                total[s] += 1
                if dx == 1:
                    jump = jump_r[i, j]
                elif dy == 1:
                    jump = jump_d[i, j]
                elif dx == -1:
                    jump = jump_r[i, j - 1] if j > 0 else True
                else:
                    jump = jump_d[i - 1, j] if i > 0 else True
                if nb < 0:
                    io, jo = i + out * dy, j + out * dx
                    h_out = np.float32(-1.0)
                    if 0 <= io < h and 0 <= jo < w and okm[io, jo]:
                        h_out = height[io, jo]
                    if height[i, j] - h_out >= rise or jump:
                        clean[s] += 1
                elif jump:
                    clean[s] += 1
                else:
                    shared[s] += 1
    return total, clean, shared


@compiled.jit
def full_labels(seg, iy, ix, z, row_term, col_term, d, min_h, nseg):
    """The grid's labels ``seg`` (h, w) at full resolution (pixel (v, u) takes cell
    (iy[v], ix[u])), -1 where the pixel's own height ``z * (row_term[v] + col_term[u]) + d``
    is below ``min_h`` (no depth -- not finite or not positive --: kept), as int32; and
    each label's pixel count (nseg,).
    All float32, as the torch code computes it.
    """
    hh, ww = z.shape
    up = np.empty((hh, ww), np.int32)
    areas = np.zeros(nseg, np.int64)
    for v in range(hh):
        r = row_term[v]
        sv = iy[v]
        for u in range(ww):
            lab = seg[sv, ix[u]]
            zv = z[v, u]
            if lab >= 0 and zv > 0 and np.isfinite(zv) and zv * (r + col_term[u]) + d < min_h:
                lab = -1
            up[v, u] = lab
            if lab >= 0:
                areas[lab] += 1
    return up, areas


@compiled.jit
def rows_and_boxes(up, row, n_out, out):
    """Each pixel's row ``row[label]`` (-1: none) into ``out`` (int16 or int32), and the
    (n_out, 4) xyxy boxes (max + 1) of the rows' pixels as int64.
    """
    hh, ww = up.shape
    boxes = np.empty((n_out, 4), np.int64)
    for r in range(n_out):
        boxes[r, 0] = ww
        boxes[r, 1] = hh
        boxes[r, 2] = 0
        boxes[r, 3] = 0
    for v in range(hh):
        for u in range(ww):
            lab = up[v, u]
            r = row[lab] if lab >= 0 else -1
            out[v, u] = r
            if r >= 0:
                if u < boxes[r, 0]:
                    boxes[r, 0] = u
                if v < boxes[r, 1]:
                    boxes[r, 1] = v
                if u + 1 > boxes[r, 2]:
                    boxes[r, 2] = u + 1
                if v + 1 > boxes[r, 3]:
                    boxes[r, 3] = v + 1
    return boxes
