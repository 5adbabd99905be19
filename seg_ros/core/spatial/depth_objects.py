"""Unseen objects from RGB-D: class-agnostic instance masks from a registered depth image.

No training, no weights: geometry on the organised point cloud (the depth image back-projected
on its own pixel grid), vectorised in torch so that the same code runs on CUDA. No rclpy.

The method (after PCL's organised multi-plane segmentation + Euclidean clustering, the
tabletop segmentation of ROS' object-recognition stacks, and LCCP's convexity rule):

1. **Points and normals** on a grid of every ``stride``-th pixel: depth smoothed by a masked
   5x5 mean (invalid pixels do not count), normals from central differences of the smoothed
   points, turned towards the camera.
2. **Support surface**: RANSAC over planes of three random points (all hypotheses scored at
   once, inliers within ``plane_tolerance`` whose normal agrees within 20 degrees), refined by
   least squares; when a second, parallel plane lies above the first with at least a quarter
   of its points (a table above a floor), that one is the support. Height of every point =
   its distance from the plane on the camera's side. Object points: height >= ``min_height``
   or 4 sigmas of the depth noise measured on the support (its inliers' robust spread: a
   real sensor's noise raises the bar, exact depth keeps ``min_height``), up to
   ``max_height``; the floor beyond a table's edge lies below the plane and is never an
   object; a segment reaching above ``max_height`` (a wall, a person) is not one either.
3. **Cuts** between neighbouring object points: a depth step larger than ``depth_jump`` of
   the depth and than 1.5x the steps beside it; a concave crease (LCCP: normals turned
   towards each other by more than
   ``crease_angle``, as where a box stands on or leans against another; convex edges, a box's
   own, are never cut); a colour edge (RGB difference larger than ``color_edge``) where the
   depth surface is continuous (two touching objects sharing a surface).
4. **Connected components** of the uncut object points (SciPy's labelling on the CPU,
   label propagation with pointer jumping on CUDA), the cut bands grown by a cell first so
   that a gap of a cell or two at the end of a crease does not join two objects; a part
   that growing broke off (smaller than ``min_part`` pixels: noise creases) rejoins its
   object; points in a cut band join the neighbouring segment across no depth step;
   segments smaller than ``min_points`` (full-resolution pixels) are dropped, and so are
   those resting neither on the table nor on a segment that does (touching it in depth, not
   only in the image: clutter beyond the table's edge, a chair behind it). The table: the
   support's largest part connected in small depth steps, parts of a quarter of its size,
   and the support inside its outline on the plane, drawn again around what rests on it (not
   a coplanar table across the room); plane-level cells reached from it count too.
   A segment whose upward-facing cells lie in two layers ``stack_gap`` or more apart in
   height, the upper a compact top, is cut above the lower layer: an object standing on
   another where the crease at its foot was lost (:mod:`seg_ros.core.spatial.depth_layers`).
   With exact depth (noise under ``FINE_NOISE``) the upward-facing cells are also taken
   from finer normals (a 3x3 mean, +-1 cell): a rim of a lower top a few pixels wide.
5. **Masks at full resolution**: the grid labels upsampled, each pixel kept when its own
   height is above ``min_height`` (pixels without depth keep their segment's label).

Score (0..1): the share of a segment's outline that geometry separates cleanly -- a rise off
the support (the outline cell at least half the object threshold above the surface three
cells further out), no depth, or a depth step -- against outline that fades into the surface
(a patch of table that the sensor's error lifts above the threshold) and, weighing a quarter,
outline cut only by a crease or a colour edge next to another segment. An isolated object
scores near 1.0, a box standing on another about 0.7, an object in a tight cluster over 0.5;
a fragment split off an object by a crease or a colour edge, or a lifted patch of table, low.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seg_ros.core import compiled
from seg_ros.core.spatial.depth_layers import UP_TILT, split_stacks
from seg_ros.core.spatial.grid_labels import (
    at_full_resolution,
    close_gaps,
    connected_components,
    fill,
    grown,
    grown4,
    labels_in,
)
from seg_ros.core.spatial.kernels import labels as klabels
from seg_ros.core.spatial.kernels import masks as kmasks
from seg_ros.core.spatial.kernels import surface as ksurface
from seg_ros.core.spatial.organised_cloud import (
    fit_support,
    masked_mean,
    normals,
    organised_points,
    shift,
)
from seg_ros.core.spatial.resting import on_table

#: a point is above the support when higher than this many sigmas of the depth noise measured
#: on the support (or ``min_height``, whichever is larger)
NOISE_SIGMAS = 4.0
#: an outline cell off every segment is cleanly separated when it rises this share of the
#: object threshold above the surface ``RISE_OUT`` cells further out (beyond the 5x5
#: smoothing): an object's edge rises, a patch of table that the sensor's low-frequency error
#: lifts over the threshold does not (on the real photos such patches scored 1.0 before;
#: generated tables, seeds 21-24, structured light AP50 0.818 -> 0.863)
RISE = 0.5
RISE_OUT = 3
#: outline shared with another segment across no depth step (a crease, a colour edge) weighs
#: this much against outline that fades into the surface: an object in a cluster keeps a
#: score over 0.5 (the node's default threshold) while a fragment or a lifted patch of table
#: stays low. With the full weight (1) the threshold cost structured-light AP50 0.863 ->
#: 0.799 on generated tables (seeds 21-24), with 0.25 0.864 -> 0.854.
SHARED_WEIGHT = 0.25

#: the depth is smoothed by a masked mean over SMOOTH x SMOOTH grid cells, kept where more
#: than SMOOTH_SHARE of the window's cells have depth
SMOOTH = 5
SMOOTH_SHARE = 0.3
#: with depth noise on the support at most FINE_NOISE metres (a simulator's exact depth, not
#: a structured-light or stereo sensor's), cells facing up are also looked for on a finer
#: scale (a FINE_SMOOTH x FINE_SMOOTH mean, normals at half the distance): the rim of a box's
#: top around a box standing on it, a few pixels wide, is lost to the coarser normals.
#: Held-out generated tables, exact depth (seeds 100, 101, 11, 12): AP50 0.893 -> 0.901,
#: 0.935 -> 0.952, 0.937 -> 0.934, 0.915 -> 0.933; on noisy depth the finer normals split
#: objects (structured light, seed 101: 0.912 -> 0.895; two real photos' bowls).
FINE_NOISE = 0.0003
FINE_SMOOTH = 3
#: a depth step larger than this share of the depth beside a step back (the opposite sign)
#: is a silhouette's staircase, not a steep surface's ramp (:func:`_jumps`); every smaller
#: one counted as a ramp cost a fragment of an object under structured-light noise
SPUR_STEP = 0.1
#: the class every segment gets (class-agnostic); index 1 of :data:`CLASS_NAMES`
CLASS_NAMES = ('__background__', 'object')


@dataclass(frozen=True)
class DepthObjectsParams:
    """The ``instance.depth_objects.*`` parameters (units in the names' docs)."""

    min_height: float = 0.004      # m above the support surface
    max_height: float = 0.6        # m above the support surface
    plane_tolerance: float = 0.01  # m, support-plane inlier distance
    depth_jump: float = 0.02       # fraction of the depth: a step larger cuts
    crease_angle: float = 20.0     # degrees: a concave crease sharper than this cuts
    color_edge: float = 0.0        # RGB distance in [0, sqrt(3)]; 0 = colour not used
    min_points: int = 150          # full-resolution pixels a segment needs
    min_part: int = 600            # full-resolution pixels; 0 = crease gaps not closed
    stack_gap: float = 0.015       # m between two layers of tops: a stack; 0 = not split
    stride: int = 2                # grid step in pixels (1 = every pixel)


@dataclass
class Segments:
    """The objects of one frame: ``masks`` (N, H, W) bool (None when not asked for),
    ``boxes`` (N, 4) xyxy float, ``scores`` (N,) float, highest score first; ``rows``
    (H, W) int16 (int32 beyond 32767 objects) the row of each pixel's object, -1 for none
    (the masks as one image: they never overlap); ``support`` (4,) plane (n, d) with
    n . p + d = height above it in metres (None when no support surface was found).
    """

    masks: torch.Tensor | None
    boxes: torch.Tensor
    scores: torch.Tensor
    support: torch.Tensor | None = None
    rows: torch.Tensor | None = None


def _empty(h: int, w: int, device: torch.device) -> Segments:
    return Segments(torch.zeros((0, h, w), dtype=torch.bool, device=device),
                    torch.zeros((0, 4), device=device), torch.zeros((0,), device=device),
                    rows=torch.full((h, w), -1, dtype=torch.int16, device=device))


def _jumps(z: torch.Tensor, dy: int, dx: int, rel: float, fast: bool = False
           ) -> torch.Tensor:
    """Depth steps between each cell and its neighbour at (dy, dx): larger than ``rel`` of
    the depth and 1.5 times the larger of the steps just before and after it (a steep but
    smooth surface, such as a box's side seen from above, steps evenly the same way, and the
    edge from its top face onto it is not cut; an occluding edge steps once). A missing
    neighbour is a step. ``fast``: the CPU's compiled loop (the same rule).
    """
    if fast:
        return torch.from_numpy(ksurface.jumps(z.numpy(), dy, dx, np.float32(rel),
                                                   np.float32(SPUR_STEP)))
    d = shift(z, dy, dx, math.nan) - z
    before = shift(d, -dy, -dx, 0.0)
    after = shift(d, dy, dx, 0.0)
    # a ramp steps one way: a step back of the opposite sign beside a step of over
    # SPUR_STEP of the depth is a one-cell spur of the far surface where a silhouette
    # crosses the grid as a staircase, and both its steps are cut (counted as a ramp, a can
    # joined the chair behind it on a real photo)
    spur = d.abs() > SPUR_STEP * z
    zero = torch.zeros((), device=z.device)
    before = torch.where((before * d < 0) & spur, zero, torch.nan_to_num(before.abs(), nan=0.0))
    after = torch.where((after * d < 0) & spur, zero, torch.nan_to_num(after.abs(), nan=0.0))
    big = d.abs() > rel * z
    lone = d.abs() > 1.5 * torch.maximum(before, after)
    return (big & lone) | torch.isnan(d)


def _surface(z: torch.Tensor, s: int, fx: float, fy: float, cx: float, cy: float,
             win: int, k: int, fast: bool) -> tuple[torch.Tensor | None, ...]:
    """The grid of every ``s``-th pixel: its raw depth ``zs`` and validity ``ok``, the depth
    smoothed by a masked ``win`` x ``win`` mean (valid, ``okm``, where more than
    ``SMOOTH_SHARE`` of the window has depth), its points ``p`` and their normals ``n``
    (central differences at +-``k``, defined where ``good``); all None with fewer than 50
    cells of depth. ``fast``: the CPU's compiled loops (the same results).
    """
    if fast:
        f32 = np.float32
        zs, ok, okm, p = (torch.from_numpy(x) for x in ksurface.smoothed_points(
            z.numpy(), s, f32(fx), f32(fy), f32(cx), f32(cy), win, f32(SMOOTH_SHARE)))
        if int(ok.sum()) < 50:
            return (None,) * 6
        n, good = (torch.from_numpy(x) for x in ksurface.normals(p.numpy(), okm.numpy(), k))
        return zs, ok, okm, p, n, good
    dev = z.device
    p_raw, ok = organised_points(z, fx, fy, cx, cy, s)
    if int(ok.sum()) < 50:
        return (None,) * 6
    zs = p_raw[2]
    zsm, cnt = masked_mean(zs, ok, win)
    okm = ok & (cnt > SMOOTH_SHARE)
    h, w = zs.shape
    rows = torch.arange(h, device=dev, dtype=torch.float32)[:, None] * s
    cols = torch.arange(w, device=dev, dtype=torch.float32)[None, :] * s
    zz = torch.where(okm, zsm, torch.zeros((), device=dev))
    p = torch.stack([(cols - cx) * zz / fx, (rows - cy) * zz / fy, zz])
    n, good = normals(p, okm, k)
    return zs, ok, okm, p, n, good


@torch.inference_mode()
def segment(z: torch.Tensor, rgb: torch.Tensor | None, fx: float, fy: float, cx: float,
            cy: float, params: DepthObjectsParams = DepthObjectsParams(),
            generator: torch.Generator | None = None, masks: bool = True) -> Segments:
    """The objects on the support surface of one frame.

    Args:
        z: (H, W) float32 depth in metres registered to the colour image (NaN / 0 = none).
        rgb: (3, H, W) float [0, 1] colour image on the same grid (None: colour unused).
        fx, fy, cx, cy: the colour camera's intrinsics in pixels of that grid.
        generator: RANSAC's random numbers (None: torch's default; pass one to repeat).
        masks: also the (N, H, W) masks (``rows`` holds the same as one image).
    """
    prm = params
    s = max(1, int(prm.stride))
    h_full, w_full = z.shape
    dev = z.device
    # on the CPU the grid passes run as compiled loops (spatial.kernels: the same results;
    # they read depth that is not finite or not positive as none themselves)
    fast = dev.type == 'cpu' and compiled.AVAILABLE
    z = z.float().contiguous() if fast else \
        torch.where(torch.isfinite(z) & (z > 0), z.float(), torch.nan)
    k = 2 if s <= 2 else 1
    zs, ok, okm, p, n, good = _surface(z, s, fx, fy, cx, cy, SMOOTH, k, fast)
    if zs is None:
        return _empty(h_full, w_full, dev)
    h, w = zs.shape
    fit = fit_support(p, n, good, prm.plane_tolerance, generator)
    if fit is None:
        return _empty(h_full, w_full, dev)
    plane, support, sigma = fit
    # above the sensor's noise as measured on the support itself (exact depth: min_height)
    min_h = max(prm.min_height, NOISE_SIGMAS * sigma)
    height = torch.einsum('chw,c->hw', p, plane[:3]) + plane[3]
    obj = okm & (height >= min_h) & (height <= prm.max_height)
    over = okm & (height > prm.max_height)

    # cuts between neighbours (right and down), on the raw depth
    jump_r = _jumps(zs, 0, 1, prm.depth_jump, fast)
    jump_d = _jumps(zs, 1, 0, prm.depth_jump, fast)
    # concave creases: the normals k cells either side of a cell turned towards each other
    cos_c = math.cos(math.radians(prm.crease_angle))
    if fast:
        crease = torch.from_numpy(ksurface.creases(n.numpy(), p.numpy(), good.numpy(), k,
                                                       np.float32(cos_c), obj.numpy()))
    else:
        crease = torch.zeros_like(obj)
        lo, hi, mid, every = slice(0, -2 * k), slice(2 * k, None), slice(k, -k), slice(None)
        for a, b, m in (((every, lo), (every, hi), (every, mid)),      # across columns
                        ((lo, every), (hi, every), (mid, every)),      # across rows
                        ((lo, lo), (hi, hi), (mid, mid)),              # the two diagonals
                        ((lo, hi), (hi, lo), (mid, mid))):
            na, nb = n[(slice(None), *a)], n[(slice(None), *b)]
            concave = ((na - nb) * (p[(slice(None), *a)] - p[(slice(None), *b)])).sum(0) < 0
            turned = (na * nb).sum(0) < cos_c
            crease[m] |= good[a] & good[b] & concave & turned
    cut = crease
    color_r = color_d = None
    if rgb is not None and prm.color_edge > 0:
        c = rgb[:, ::s, ::s].float()
        c = F.avg_pool2d(c[None], 3, 1, 1, count_include_pad=False)[0]
        dr, dd = c - shift(c, 0, 1, 0.0), c - shift(c, 1, 0, 0.0)
        color_r = (dr * dr).sum(0) > prm.color_edge ** 2
        color_d = (dd * dd).sum(0) > prm.color_edge ** 2
    link_r = ~jump_r
    link_d = ~jump_d
    if color_r is not None:
        link_r &= ~color_r
        link_d &= ~color_d
    core = obj & ~cut
    lab = connected_components(core, link_r, link_d)
    part_cells = max(1, round(prm.min_part / (s * s)))   # min_part in grid cells
    if prm.min_part > 0:
        lab = close_gaps(lab, obj & ~grown(cut), link_r, link_d, part_cells)
    # the cut bands join a neighbouring segment across no depth step
    lr = link_r & obj & shift(obj, 0, 1, False)
    ld = link_d & obj & shift(obj, 1, 0, False)
    ll, lu = shift(lr, 0, -1, False), shift(ld, -1, 0, False)
    lab = fill(lab, obj, (lr, ll, ld, lu), 2 * k + 2)
    # an object standing on another whose crease was lost: their tops at two heights
    cos_up = math.cos(math.radians(UP_TILT))
    up_facing = good & ((n * plane[:3, None, None]).sum(0) >= cos_up)
    if sigma <= FINE_NOISE:   # depth this exact resolves a narrow rim: its finer normals too
        *_, n_fine, good_fine = _surface(z, s, fx, fy, cx, cy, FINE_SMOOTH, max(1, k // 2),
                                         fast)
        up_facing |= good_fine & ((n_fine * plane[:3, None, None]).sum(0) >= cos_up)
    layer_cells = max(4, round(prm.min_points / (s * s)) // 2)   # half a segment's, >= 4
    lab = split_stacks(lab, height, up_facing, link_r, link_d, sigma, prm.stack_gap,
                       layer_cells, part_cells)
    # cells without depth inside an object take its label (holes, edge dropouts)
    nod = ~ok
    anyr, anyd = torch.ones_like(obj), torch.ones_like(obj)
    lab = fill(lab, nod, (anyr, shift(anyr, 0, -1, False), anyd, shift(anyd, -1, 0, False)),
                2)
    labelled = lab >= 0
    if not bool(labelled.any()):
        return _empty(h_full, w_full, dev)
    if fast:
        seg, nseg = klabels.compact(lab.numpy())
        seg = torch.from_numpy(seg)
    else:
        uniq, inv = torch.unique(lab[labelled], return_inverse=True)
        nseg = uniq.numel()
        seg = torch.full_like(lab, -1)
        seg[labelled] = inv
    # score: clean outline (a rise off the support, no depth, a depth step) / whole outline,
    # outline shared with another segment across no step weighing SHARED_WEIGHT; per cell its
    # outline sides, clean ones and shared ones, summed per segment in one bincount each
    inside = seg >= 0
    if fast:
        total, clean, shared = (torch.from_numpy(x).float() for x in kmasks.outline_counts(
            seg.numpy(), nseg, jump_r.numpy(), jump_d.numpy(), height.numpy(), okm.numpy(),
            np.float32(RISE * min_h), RISE_OUT))
    else:
        edges = torch.zeros(seg.shape, dtype=torch.int32, device=dev)
        cleans = torch.zeros_like(edges)
        cuts = torch.zeros_like(edges)
        surface = torch.where(okm, height, -1.0)   # -1: no depth (an outline there is clean)
        for dy, dx, jump in ((0, 1, jump_r), (1, 0, jump_d),
                             (0, -1, shift(jump_r, 0, -1, True)),
                             (-1, 0, shift(jump_d, -1, 0, True))):
            nb = shift(seg, dy, dx, -1)
            edge = inside & (nb != seg)
            edges += edge
            # off the segment: clean where the cell rises above the surface RISE_OUT cells out
            h_out = shift(surface, RISE_OUT * dy, RISE_OUT * dx, -1.0)
            cleans += edge & (((nb < 0) & (height - h_out >= RISE * min_h)) | jump)
            cuts += edge & (nb >= 0) & ~jump
        bins = (seg + 1).flatten()
        total = torch.bincount(bins, edges.flatten(), minlength=nseg + 1)[1:].float()
        clean = torch.bincount(bins, cleans.flatten(), minlength=nseg + 1)[1:].float()
        shared = torch.bincount(bins, cuts.flatten(), minlength=nseg + 1)[1:].float()
    scores = clean / (total - (1 - SHARED_WEIGHT) * shared).clamp_min(1.0)
    # a segment that touches points above max_height is the lower part of something taller
    # (a wall, a person): not an object
    tall = labels_in(seg, nseg, inside & grown4(over))
    # a segment rests on the table, or on a segment that does (a box on a box); clutter
    # beyond the table's edge (chairs, a floor's things, a coplanar table across the room)
    # does not (:mod:`seg_ros.core.spatial.resting`)
    on_support = on_table(seg, nseg, zs, ok, okm, p, plane, support, height,
                          prm.plane_tolerance, k)
    tall |= ~on_support
    # full resolution: the grid labels upsampled (nearest), each pixel's own height checked
    done = at_full_resolution(seg, nseg, s, z, plane, fx, fy, cx, cy, min_h,
                              max(1, int(prm.min_points)), tall, scores, fast)
    if done is None:
        return _empty(h_full, w_full, dev)
    order, small, boxes = done
    n_out = order.numel()
    out = None
    if masks:
        out = small[None] == torch.arange(n_out, device=dev, dtype=small.dtype)[:, None, None]
    return Segments(out, boxes, scores[order].float(), plane, small)
