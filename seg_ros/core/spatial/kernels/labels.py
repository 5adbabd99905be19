"""Labels on the organised grid of :mod:`seg_ros.core.spatial.depth_objects`, compiled for
the CPU: connected components along links (union-find), fills along links, growing, which
labels a set of cells holds, renumbering, the crease-gap closing's rejoin and the stack
split of :mod:`seg_ros.core.spatial.depth_layers`. Each the same result as the torch code
beside its caller (tested); no rclpy.
"""
from __future__ import annotations

import numpy as np

from seg_ros.core import compiled


@compiled.jit
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:           # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@compiled.jit
def _union(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:                        # the smaller index is the root: the label is the
        parent[rb] = ra                # smallest flat index of the component
    elif rb < ra:
        parent[ra] = rb


@compiled.jit
def components(active, lr, ld):
    """Labels (h, w) int64 of the 4-connected components of ``active``, neighbours joined
    where ``lr`` (with the right one) / ``ld`` (with the one below) is set and both are
    active; -1 for inactive cells, else the smallest flat index of the component.
    """
    h, w = active.shape
    parent = np.arange(h * w)
    for i in range(h):
        for j in range(w):
            if not active[i, j]:
                continue
            c = i * w + j
            if j + 1 < w and lr[i, j] and active[i, j + 1]:
                _union(parent, c, c + 1)
            if i + 1 < h and ld[i, j] and active[i + 1, j]:
                _union(parent, c, c + w)
    out = np.full((h, w), -1, np.int64)
    for i in range(h):
        for j in range(w):
            if active[i, j]:
                out[i, j] = _find(parent, i * w + j)
    return out


@compiled.jit
def fill(lab, can, right, left, down, up, steps):
    """Unlabelled (< 0) cells of ``can`` take the smallest label of their labelled
    neighbours joined by the links (right, left, down, up), ``steps`` rounds, each round
    reading the labels as they were at its start. Returns a new (h, w) int64 array.
    """
    h, w = lab.shape
    out = lab.copy()
    cells = np.nonzero((lab < 0) & can)
    ys, xs = cells[0], cells[1]
    m = ys.size
    cand = np.empty(m, np.int64)
    for _ in range(steps):
        taken = 0
        for t in range(m):
            i, j = ys[t], xs[t]
            best = -1
            if out[i, j] < 0:
                if j + 1 < w and right[i, j] and out[i, j + 1] >= 0:
                    best = out[i, j + 1]
                if j > 0 and left[i, j] and out[i, j - 1] >= 0 and \
                        (best < 0 or out[i, j - 1] < best):
                    best = out[i, j - 1]
                if i + 1 < h and down[i, j] and out[i + 1, j] >= 0 and \
                        (best < 0 or out[i + 1, j] < best):
                    best = out[i + 1, j]
                if i > 0 and up[i, j] and out[i - 1, j] >= 0 and \
                        (best < 0 or out[i - 1, j] < best):
                    best = out[i - 1, j]
            cand[t] = best
            if best >= 0:
                taken += 1
        if taken == 0:
            break
        for t in range(m):
            if cand[t] >= 0:
                out[ys[t], xs[t]] = cand[t]
    return out


@compiled.jit
def grown(mask, r):
    """``mask`` grown by ``r`` cells (a (2r + 1)-square): ORs of shifted rows, then of
    shifted columns (branch-free inner loops the compiler vectorises); from r = 3 on,
    counts over the windows from prefix sums (the same, independent of r).
    """
    h, w = mask.shape
    if r > 2:
        return _grown_wide(mask, r)
    rows = mask.copy()
    for i in range(h):
        for d in range(1, min(r, w - 1) + 1):
            for j in range(d, w):
                rows[i, j] |= mask[i, j - d]
            for j in range(w - d):
                rows[i, j] |= mask[i, j + d]
    out = rows.copy()
    for i in range(h):
        for d in range(1, r + 1):
            if i - d >= 0:
                for j in range(w):
                    out[i, j] |= rows[i - d, j]
            if i + d < h:
                for j in range(w):
                    out[i, j] |= rows[i + d, j]
    return out


@compiled.jit
def _grown_wide(mask, r):
    h, w = mask.shape
    rows = np.zeros((h, w), np.bool_)
    pre = np.zeros(w + 1, np.int32)
    for i in range(h):
        for j in range(w):
            pre[j + 1] = pre[j] + mask[i, j]
        for j in range(w):
            rows[i, j] = pre[min(j + r, w - 1) + 1] - pre[max(j - r, 0)] > 0
    pre2 = np.zeros((h + 1, w), np.int32)
    for i in range(h):
        for j in range(w):
            pre2[i + 1, j] = pre2[i, j] + rows[i, j]
    out = np.empty((h, w), np.bool_)
    for i in range(h):
        lo, hi = max(i - r, 0), min(i + r, h - 1) + 1
        for j in range(w):
            out[i, j] = pre2[hi, j] - pre2[lo, j] > 0
    return out


@compiled.jit
def labels_in(seg, nseg, cells):
    """(nseg,) bool: has label j of ``seg`` (-1 none) a cell in ``cells``?"""
    h, w = seg.shape
    out = np.zeros(nseg, np.bool_)
    for i in range(h):
        for j in range(w):
            if cells[i, j] and seg[i, j] >= 0:
                out[seg[i, j]] = True
    return out


@compiled.jit
def compact(lab):
    """``lab``'s labels (>= 0; -1 none) renumbered 0, 1, ... in ascending order of value
    (as ``torch.unique`` orders them), and their count.
    """
    h, w = lab.shape
    top = -1
    for i in range(h):
        for j in range(w):
            if lab[i, j] > top:
                top = lab[i, j]
    lut = np.full(top + 1, -1, np.int64)
    for i in range(h):
        for j in range(w):
            if lab[i, j] >= 0:
                lut[lab[i, j]] = 0
    n = 0
    for v in range(top + 1):
        if lut[v] == 0:
            lut[v] = n
            n += 1
    out = np.full((h, w), -1, np.int64)
    for i in range(h):
        for j in range(w):
            if lab[i, j] >= 0:
                out[i, j] = lut[lab[i, j]]
    return out, n


@compiled.jit
def rejoin_small(lab, lab1, min_cells):
    """:func:`seg_ros.core.spatial.grid_labels.close_gaps` after its labelling: each part of
    ``lab1`` (labels = smallest flat index) smaller than ``min_cells`` takes the label of the
    largest part (ties: the smallest label) of its component in ``lab``; the others keep
    theirs; cells without a part: -1.
    """
    h, w = lab.shape
    n = h * w
    area = np.zeros(n, np.int64)
    host = np.full(n, -1, np.int64)
    for i in range(h):
        for j in range(w):
            q = lab1[i, j]
            if q >= 0:
                area[q] += 1
                if lab[i, j] > host[q]:
                    host[q] = lab[i, j]
    best = np.full(n, -1, np.int64)            # per host: its largest part
    for q in range(n):
        if area[q] == 0:
            continue
        b = best[host[q]]
        if b < 0 or area[q] > area[b] or (area[q] == area[b] and q < b):
            best[host[q]] = q
    out = np.full((h, w), -1, np.int64)
    for i in range(h):
        for j in range(w):
            q = lab1[i, j]
            if q >= 0:
                out[i, j] = best[host[q]] if area[q] < min_cells else q
    return out


@compiled.jit
def stack_cuts(lab, height, up, min_cells, bin_, share, low_share, low_bins, need_bins,
               compact_, margin):
    """:func:`seg_ros.core.spatial.depth_layers.split_stacks` up to its cut: per label (a
    flat cell index) of ``lab`` the height above which its cells are the upper object,
    +inf where it is not cut; (h * w + 1,) float32 (the last entry: no label), and whether
    any is cut (labels outside 0..h*w-1 are none). The torch code's arithmetic: float32
    heights, bins and cut heights (``(low + 1) * bin_ + margin``), float64 moments summed in
    cell order.
    """
    h, w = lab.shape
    n = h * w
    cut = np.full(n + 1, np.inf, np.float32)
    per = np.zeros(n, np.int64)
    total = 0
    for i in range(h):
        for j in range(w):
            if up[i, j] and 0 <= lab[i, j] < n:
                per[lab[i, j]] += 1
                total += 1
    if total < 2 * min_cells:
        return cut, False
    slot = np.full(n, -1, np.int64)
    ns = 0
    for q in range(n):
        if per[q] >= 2 * min_cells:
            slot[q] = ns
            ns += 1
    if ns == 0:
        return cut, False
    many = np.empty(ns, np.int64)
    for q in range(n):
        if slot[q] >= 0:
            many[slot[q]] = q
    top = np.float32(-np.inf)
    for i in range(h):
        for j in range(w):
            if up[i, j] and 0 <= lab[i, j] < n and slot[lab[i, j]] >= 0 and height[i, j] > top:
                top = height[i, j]
    top = min(max(top, np.float32(0.0)), np.float32(3.0))
    nb = int(top / bin_) + 3
    last = np.float32(nb - 1)
    zero = np.float32(0.0)
    counts = np.zeros((ns, nb), np.int64)
    for i in range(h):
        for j in range(w):
            if up[i, j] and 0 <= lab[i, j] < n and slot[lab[i, j]] >= 0:
                b = min(max(np.floor(height[i, j] / bin_), zero), last)
                counts[slot[lab[i, j]], int(b)] += 1
    low = np.full(ns, nb, np.int64)
    high = np.full(ns, -1, np.int64)
    cand = np.zeros(ns, np.bool_)
    for t in range(ns):
        enough = np.float32(counts[t].sum()) * share
        enough_low = np.float32(counts[t].sum()) * low_share
        for b in range(nb):
            win = counts[t, b] + (counts[t, b - 1] if b > 0 else 0) + \
                (counts[t, b + 1] if b + 1 < nb else 0)
            if win < min_cells or counts[t, b] == 0:
                continue
            if np.float32(win) >= enough_low:
                low[t] = min(low[t], b)
            if np.float32(win) >= enough:
                high[t] = max(high[t], b)
        if low[t] < nb:     # the lower layer's fullest bin of three, below the upper layer
            peak = low[t]
            for b in range(low[t] + 1, low[t] + 3):
                if b < high[t] and counts[t, b] > counts[t, peak]:
                    peak = b
            cand[t] = high[t] - peak >= need_bins and low[t] >= low_bins
            low[t] = peak
    if not cand.any():
        return cut, False
    # the upper layer a compact patch: its cells against its second moments' ellipse
    cnt = np.zeros(ns)
    sr = np.zeros(ns)
    sc = np.zeros(ns)
    srr = np.zeros(ns)
    scc = np.zeros(ns)
    src = np.zeros(ns)
    for i in range(h):
        for j in range(w):
            if not (up[i, j] and 0 <= lab[i, j] < n):
                continue
            t = slot[lab[i, j]]
            if t < 0 or not cand[t]:
                continue
            b = int(min(max(np.floor(height[i, j] / bin_), zero), last))
            if abs(b - high[t]) > 1:
                continue
            r, c = float(i), float(j)
            cnt[t] += 1
            sr[t] += r
            sc[t] += c
            srr[t] += r * r
            scc[t] += c * c
            src[t] += r * c
    anycut = False
    for t in range(ns):
        if not cand[t]:
            continue
        m = max(cnt[t], 1.0)
        mr, mc = sr[t] / m, sc[t] / m
        vr = srr[t] / m - mr * mr
        vc = scc[t] / m - mc * mc
        vrc = src[t] / m - mr * mc
        ellipse = 4 * np.pi * np.sqrt(max(vr * vc - vrc * vrc, 0.0))
        if m >= compact_ * ellipse:
            cut[many[t]] = (np.float32(low[t]) + np.float32(1.0)) * bin_ + margin
            anycut = True
    return cut, anycut


@compiled.jit
def stack_split(lab, height, cut, link_r, link_d, min_part):
    """The cells of ``lab`` higher than their label's ``cut`` as connected parts (along the
    links, within one label), each of at least ``min_part`` cells a new segment labelled
    its smallest flat index + 2 * h * w; the other cells keep ``lab``'s label.
    """
    h, w = lab.shape
    n = h * w
    upper = np.zeros((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            q = lab[i, j]
            upper[i, j] = height[i, j] > cut[q if 0 <= q < n else n]
    lr = np.zeros((h, w), np.bool_)
    ld = np.zeros((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            if j + 1 < w:
                lr[i, j] = link_r[i, j] and lab[i, j] == lab[i, j + 1]
            if i + 1 < h:
                ld[i, j] = link_d[i, j] and lab[i, j] == lab[i + 1, j]
    parts = components(upper, lr, ld)
    area = np.zeros(n, np.int64)
    for i in range(h):
        for j in range(w):
            if parts[i, j] >= 0:
                area[parts[i, j]] += 1
    out = lab.copy()
    for i in range(h):
        for j in range(w):
            if parts[i, j] >= 0 and area[parts[i, j]] >= min_part:
                out[i, j] = parts[i, j] + 2 * n
    return out
