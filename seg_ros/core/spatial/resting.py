"""What rests on what: the segments of one frame that stand on the table, directly or on a
segment that does. Clutter beyond the table's edge, a chair behind it and the things on a
coplanar table across the room rest on neither. No rclpy; torch on the grid's device.

The table: the support's largest part connected in small depth steps (LEVEL_DZ), its parts of
at least TABLE_SHARE of that size, and the support inside its outline on the plane, drawn
again around the segments found resting on it (the table runs on under them). A segment
rests on the table where it borders it (within the normals' reach), or plane-level cells
reached from it in small depth steps (around an object's foot the smoothing tilts the
table's normals); on a segment where they touch in depth, not only in the image (TOUCH_GAP).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from seg_ros.core import compiled
from seg_ros.core.spatial.grid_labels import (
    connected_components,
    fill,
    grown,
    grown4,
    labels_in,
)
from seg_ros.core.spatial.kernels import surface as ksurface
from seg_ros.core.spatial.organised_cloud import shift

#: two segments touch (one may rest on the other) where neighbouring cells of theirs lie at
#: most this far apart in depth (m): an object standing on another meets it at a crease
#: (no step) or, overhanging it, a step of the overhang; something far behind an object
#: that borders it in the image does not
TOUCH_GAP = 0.2
#: a segment rests on the support also where it borders plane-level cells (within
#: ``plane_tolerance`` of it, whatever their normals) reached from the table in up to
#: LEVEL_STEPS grid cells, each step at most LEVEL_DZ (m) in depth
LEVEL_STEPS = 8
LEVEL_DZ = 0.02
#: the table is the support's largest part (connected in depth steps of at most LEVEL_DZ),
#: the parts of at least this share of its size (the table beyond a long object lying
#: across it) and the support inside its outline on the plane (:func:`within_hull`)
TABLE_SHARE = 0.25


def near(zs: torch.Tensor, ok: torch.Tensor, dy: int, dx: int, gap: float) -> torch.Tensor:
    """Cells with depth whose neighbour (dy, dx) has depth at most ``gap`` (m) from theirs."""
    return ok & shift(ok, dy, dx, False) & ((shift(zs, dy, dx, 0.0) - zs).abs() <= gap)


def within_hull(p: torch.Tensor, plane: torch.Tensor, part: torch.Tensor,
                cells: torch.Tensor, sides: int = 16, margin: float = 0.02) -> torch.Tensor:
    """Which ``cells`` (h, w) project onto the support plane inside the convex hull of
    ``part``'s points (a polygon of ``sides`` sides around it, ``margin`` m wider): the
    table's own surface, not a coplanar table across the room. The hull is its outline's
    (the cells of ``part`` with a neighbour outside it or at the image's border).
    """
    if not bool(cells.any()):
        return torch.zeros_like(cells)
    nrm = plane[:3]
    a = torch.tensor([1.0, 0.0, 0.0], device=p.device) if float(nrm[0].abs()) < 0.9 else \
        torch.tensor([0.0, 1.0, 0.0], device=p.device)
    e1 = torch.linalg.cross(nrm, a)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(nrm, e1)
    t = torch.arange(sides, device=p.device, dtype=torch.float32) * (2 * math.pi / sides)
    dirs = torch.cos(t)[:, None] * e1[None] + torch.sin(t)[:, None] * e2[None]   # (K, 3)
    if p.device.type == 'cpu' and compiled.AVAILABLE:
        dn = dirs.numpy()
        reach = ksurface.hull_reach(p.numpy(), part.numpy(), dn)
        return torch.from_numpy(ksurface.in_hull(p.numpy(), cells.numpy(), dn,
                                                     reach + np.float32(margin)))
    edge = part & grown4(~part, outside=True)
    reach = (dirs @ p[:, edge]).amax(1)                                          # (K,)
    out = torch.zeros_like(cells)
    out[cells] = ((dirs @ p[:, cells]) <= (reach + margin)[:, None]).all(0)
    return out


def rests(on_support: torch.Tensor, touches: torch.Tensor) -> torch.Tensor:
    """Per segment: does it rest on the support through a chain of touching segments
    (a stack of three boxes, an object in fragments)? ``touches`` (N, N) symmetric.
    """
    for _ in range(on_support.numel()):
        more = on_support | (touches & on_support[None, :]).any(1)
        if bool((more == on_support).all()):
            break
        on_support = more
    return on_support


def on_table(seg: torch.Tensor, nseg: int, zs: torch.Tensor, ok: torch.Tensor,
             okm: torch.Tensor, p: torch.Tensor, plane: torch.Tensor, support: torch.Tensor,
             height: torch.Tensor, plane_tolerance: float, k: int) -> torch.Tensor:
    """(nseg,) bool: does each segment of ``seg`` (grid labels 0..nseg-1, -1 none) rest on
    the table, directly or through segments it touches?

    Args:
        zs: raw grid depth (m); ok: cells with depth; okm: cells with smoothed depth;
        p: (3, h, w) smoothed points; plane, support, height: the support's fit and inliers
        and each cell's height above it; k: the normals' reach in cells.
    """
    dev = seg.device
    inside = seg >= 0
    # neighbours in the image that are also near in depth: a chair behind the table whose
    # back borders a tall can in the image does not rest on the can
    fast = dev.type == 'cpu' and compiled.AVAILABLE     # the CPU's compiled loops (the same)
    if fast:
        touches = torch.from_numpy(ksurface.touching(seg.numpy(), nseg, zs.numpy(),
                                                         ok.numpy(), np.float32(TOUCH_GAP)))
    else:
        touches = torch.zeros((nseg, nseg), dtype=torch.bool, device=dev)
        for dy, dx in ((0, 1), (1, 0)):             # neighbours either way round
            nb = shift(seg, dy, dx, -1)
            pair = inside & (nb >= 0) & (nb != seg) & near(zs, ok, dy, dx, TOUCH_GAP)
            a, b = seg[pair], nb[pair]
            touches[a, b] = True
            touches[b, a] = True
    if not bool(support.any()):
        return torch.zeros((nseg,), dtype=torch.bool, device=dev)
    if fast:
        near_r, near_d = (torch.from_numpy(x) for x in ksurface.near_links(
            zs.numpy(), ok.numpy(), np.float32(LEVEL_DZ)))
    else:
        near_r, near_d = near(zs, ok, 0, 1, LEVEL_DZ), near(zs, ok, 1, 0, LEVEL_DZ)
    parts = connected_components(support, near_r, near_d)
    sizes = torch.bincount(parts[support])
    main = parts == sizes.argmax()
    table = support & (sizes[parts.clamp_min(0)] >= TABLE_SHARE * sizes.max())
    table |= within_hull(p, plane, main, support & ~table)
    on_support = rests(labels_in(seg, nseg, inside & grown(table, k + 1)), touches)
    resting = inside & on_support[seg.clamp_min(0)]
    if bool(resting.any()):
        # the table runs on under the objects: its outline drawn around them as well takes
        # in the table seen between them and the image's border (a pocket no path reaches)
        more = within_hull(p, plane, main | (resting & okm), support & ~table)
        table |= more
        on_support = rests(on_support | labels_in(seg, nseg, inside & grown(more, k + 1)), touches)
    if bool(on_support.all()):
        return on_support
    # the rest may rest on plane-level cells reached in small depth steps from the table:
    # around an object's foot the smoothing tilts the table's normals, and a cup near the
    # table's edge, ringed by such cells, rested on nothing. Only from the table: a chair's
    # seat behind it is coplanar with it, and from there its back crosses the plane's
    # height. Looked for only near the segments still without support (a few ms).
    rest = inside & ~on_support[seg.clamp_min(0)]
    level = okm & (height.abs() <= plane_tolerance) & grown(rest, LEVEL_STEPS + k + 1)
    steps = (near_r, shift(near_r, 0, -1, False), near_d, shift(near_d, -1, 0, False))
    base = fill(torch.where(table, 0, -1), level, steps, LEVEL_STEPS) >= 0
    return rests(on_support | labels_in(seg, nseg, rest & grown(base, k + 1)), touches)
