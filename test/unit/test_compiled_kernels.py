"""The CPU's compiled loops (Numba: seg_ros.core.spatial.kernels) against the torch / NumPy
code they stand in for, which stays the path on CUDA: the same labels, masks, boxes,
scores and 3D figures, on random grids, generated tables (exact depth and a structured-light
sensor's noise, stacks) and hostile depth. No rclpy.
"""
import numpy as np
import pytest
import torch

from seg_ros.core import compiled
from seg_ros.core.spatial import geometry, grid_labels, quantiles
from seg_ros.core.spatial.depth_layers import split_stacks
from seg_ros.core.spatial.depth_objects import DepthObjectsParams, _jumps, segment
from seg_ros.core.spatial.kernels import surface
from seg_ros.core.spatial.organised_cloud import masked_mean, normals, organised_points
from seg_ros.synthetic import tabletop


def test_numba_is_there_and_the_compiled_path_runs():
    """numba is a dependency: without it every figure of BENCHMARKS' depth_objects node
    would be the slower torch path's, silently."""
    assert compiled.AVAILABLE


def _both(monkeypatch, fn, *args):
    """fn(*args) with the compiled loops, then with the torch / NumPy code."""
    a = fn(*args)
    monkeypatch.setattr(compiled, 'AVAILABLE', False)
    b = fn(*args)
    monkeypatch.setattr(compiled, 'AVAILABLE', True)
    return a, b


@pytest.mark.parametrize('density', [0.3, 0.7, 0.95])
def test_components_and_fill_equal_the_torch_code(monkeypatch, density):
    gen = torch.Generator().manual_seed(int(density * 100))
    for h, w in ((1, 1), (5, 3), (37, 53)):
        active, right, down = (torch.rand((h, w), generator=gen) < density for _ in range(3))
        a, b = _both(monkeypatch, grid_labels.connected_components, active, right,
                     down)
        assert torch.equal(a, b)
        # labels beyond the grid's size (split_stacks' new segments) are filled too
        lab = torch.where(torch.rand((h, w), generator=gen) < 0.3,
                          torch.randint(0, 3 * h * w + 5, (h, w), generator=gen), -1)
        can = torch.rand((h, w), generator=gen) < density
        links = tuple(torch.rand((h, w), generator=gen) < density for _ in range(4))
        a, b = _both(monkeypatch, grid_labels.fill, lab, can, links, 3)
        assert torch.equal(a, b)
        if h * w > 1000:                          # something was filled
            assert ((a >= 0) & (lab < 0)).any()
        for r in (1, 2, 11):
            a, b = _both(monkeypatch, grid_labels.grown, active, r)
            assert torch.equal(a, b)


def test_a_fill_takes_split_labels_beyond_the_grid_size():
    """The torch fill once took labels >= the grid's size (split_stacks' upper objects) for
    'none': cells without depth inside such an object stayed out of it."""
    lab = torch.tensor([[-1, -1, 40]])
    ones = torch.ones((1, 3), dtype=torch.bool)
    out = grid_labels.fill(lab, ones, (ones, ones, ones, ones), 2)
    assert out.tolist() == [[40, 40, 40]]


def _pair_points(z, s, k, f):
    p_raw, ok = organised_points(z, f, f, k[0], k[1], s)
    zsm, cnt = masked_mean(p_raw[2], ok, 5)
    okm = ok & (cnt > 0.3)
    h, w = ok.shape
    rows = torch.arange(h, dtype=torch.float32)[:, None] * s
    cols = torch.arange(w, dtype=torch.float32)[None, :] * s
    zz = torch.where(okm, zsm, torch.zeros(()))
    p = torch.stack([(cols - k[0]) * zz / f, (rows - k[1]) * zz / f, zz])
    return p_raw[2], ok, okm, p


@pytest.mark.parametrize('s', [1, 2, 3])
def test_points_normals_jumps_equal_the_torch_code(s):
    rng = np.random.default_rng(s)
    z = rng.uniform(0.4, 1.2, (47, 61)).astype(np.float32)
    z[rng.random(z.shape) < 0.15] = 0.0
    z[rng.random(z.shape) < 0.05] = np.nan
    z[rng.random(z.shape) < 0.02] = -1.0
    z[rng.random(z.shape) < 0.02] = np.inf
    zt = torch.from_numpy(z)
    zc = torch.where(torch.isfinite(zt) & (zt > 0), zt, torch.nan)
    zs, ok, okm, p = _pair_points(zc, s, (30.5, 22.25), 57.0)
    f32 = np.float32
    zs2, ok2, okm2, p2 = surface.smoothed_points(z, s, f32(57.0), f32(57.0), f32(30.5),
                                                      f32(22.25), 5, f32(0.3))
    assert np.array_equal(zs.numpy(), zs2) and np.array_equal(ok.numpy(), ok2)
    assert np.array_equal(okm.numpy(), okm2) and np.array_equal(p.numpy(), p2)
    k = 2 if s <= 2 else 1
    n, good = normals(p, okm, k)
    n2, good2 = surface.normals(p2, okm2, k)
    assert np.array_equal(good.numpy(), good2)
    # torch's vectorised square root rounds a last bit differently from the C library's
    np.testing.assert_allclose(n.numpy(), n2, rtol=0, atol=3e-7)
    for dy, dx in ((0, 1), (1, 0)):
        assert torch.equal(_jumps(zs, dy, dx, 0.02), _jumps(zs, dy, dx, 0.02, fast=True))


def _tables(noise, n=3, seed=41, size=(320, 240)):
    out = []
    for i in range(n):
        sc = tabletop.render(np.random.default_rng((seed, i)), *size, stack=0.7,
                             depth_noise=noise)
        z = torch.from_numpy(np.round(sc.depth * 1000).astype(np.float32) / 1000)
        rgb = torch.from_numpy(sc.rgb).permute(2, 0, 1).float().div(255)
        out.append((z, rgb, sc.k))
    return out


def _segment_all(frames, prm):
    res = []
    for z, rgb, k in frames:
        s = segment(z, rgb, k[0], k[4], k[2], k[5], prm, torch.Generator().manual_seed(0),
                    masks=False)
        res.append((s.rows, s.boxes, s.scores))
    return res


@pytest.mark.parametrize('noise', ['exact', 'structured_light'])
def test_segment_is_the_same_compiled_and_in_torch(monkeypatch, noise):
    """Every stage in one go (points, normals, creases, jumps, labelling, gap closing, fills,
    stacks, outline scores, what rests on the table, the full-resolution masks and boxes)."""
    frames = _tables(noise)
    for prm in (DepthObjectsParams(), DepthObjectsParams(color_edge=0.2, stride=3),
                DepthObjectsParams(stride=1, min_part=0)):
        a, b = _both(monkeypatch, _segment_all, frames, prm)
        assert len(a) == len(b)
        for (ra, ba, sa), (rb, bb, sb) in zip(a, b, strict=True):
            assert torch.equal(ra, rb) and torch.equal(ba, bb) and torch.equal(sa, sb)
        assert sum(int(s.numel()) for _, _, s in a) >= 3 * len(frames)


@pytest.mark.parametrize('depth', [
    np.zeros((60, 80)), np.full((60, 80), np.inf), -np.ones((60, 80)),
    np.random.default_rng(0).uniform(0, 5, (60, 80)),
    np.where(np.random.default_rng(1).random((60, 80)) < 0.5, np.inf, 0.9)])
def test_hostile_depth_is_the_same_compiled(monkeypatch, depth):
    frames = [(torch.from_numpy(depth.astype(np.float32)), None,
               [60.0, 0, 40, 0, 60.0, 30, 0, 0, 1])]
    a, b = _both(monkeypatch, _segment_all, frames, DepthObjectsParams())
    for x, y in zip(a[0], b[0], strict=True):
        assert torch.equal(x, y)


def test_split_stacks_is_the_same_compiled(monkeypatch):
    """A 20x20 top at 5 cm with a 10x10 top at 10 cm in it: cut; the same on noise."""
    lab = torch.full((40, 40), -1, dtype=torch.int64)
    lab[10:30, 10:30] = 7
    height = torch.zeros((40, 40))
    height[10:30, 10:30] = 0.05
    height[14:26, 14:26] = 0.075
    height[15:25, 15:25] = 0.10
    up = (height == 0.05) | (height == 0.10)
    links = torch.ones((40, 40), dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    noisy = height + 0.002 * torch.randn((40, 40), generator=gen)
    for h in (height, noisy):
        for min_part in (20, 200):
            a, b = _both(monkeypatch, split_stacks, lab, h, up, links, links, 0.0,
                         0.015, 10, min_part)
            assert torch.equal(a, b)
    assert (split_stacks(lab, height, up, links, links, 0.0, 0.015, 10, 20) != lab).any()


def test_grouped_quantiles_are_numpys(monkeypatch):
    rng = np.random.default_rng(5)
    for m, groups, ties in ((0, 3, False), (1, 1, False), (500, 7, True), (3000, 23, False)):
        v = rng.normal(0, 2, (m, 3)).astype(np.float32)
        if ties:
            v = np.round(v, 1)
        g = rng.integers(0, groups - 1 if groups > 2 else groups, m)   # the last may be empty
        for qs in ((0.5, 0.02, 0.98), (0.0, 1.0, 0.25, 0.75)):
            (a, ca), (b, cb) = _both(monkeypatch, quantiles.grouped_quantiles,
                                      torch.from_numpy(v), torch.from_numpy(g), groups, qs)
            assert torch.equal(ca, cb)
            assert np.array_equal(a.numpy(), b.numpy(), equal_nan=True)


def test_instance_geometry_is_the_same_compiled(monkeypatch):
    rng = np.random.default_rng(2)
    z = torch.from_numpy(rng.uniform(0.2, 3.0, (48, 64)).astype(np.float32))
    z[torch.from_numpy(rng.random((48, 64)) < 0.1)] = float('nan')
    id_map = rng.integers(0, 6, (48, 64)).astype(np.uint16)
    intr = geometry.Intrinsics(60.0, 61.5, 31.7, 24.2)
    turn = geometry.RigidTransform.from_quaternion([0.1, -0.2, 0.3], [0.1, 0.2, 0.3, 0.9])
    for ids in (np.array([1, 3, 4], np.uint16), np.zeros(0, np.uint16)):
        for transform in (None, turn):
            a, b = _both(monkeypatch, geometry.instance_geometry, z, id_map, ids,
                         intr, 0.3, 2.5, transform)
            for name in ('points', 'point_ids', 'counts', 'position', 'box_min', 'box_max'):
                x, y = getattr(a, name), getattr(b, name)
                assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name
            assert a.points.shape[0] == (a.counts.sum() if ids.size else 0)


def test_out_of_range_indices_are_refused_or_ignored_never_read():
    """Compiled code does not check indices: the kernels that take labels or groups from a
    caller check them themselves (a torch IndexError becomes a ValueError, a label beyond
    the grid is no segment) instead of reading memory they do not own."""
    with pytest.raises(ValueError, match='group index'):
        quantiles.grouped_quantiles(torch.zeros((3, 3)), torch.tensor([0, 5, 1]), 2, (0.5,))
    lab = torch.full((20, 20), 10_000, dtype=torch.int64)       # all beyond 20 x 20
    height = torch.full((20, 20), 0.1)
    links = torch.ones((20, 20), dtype=torch.bool)
    assert torch.equal(split_stacks(lab, height, links, links, links, 0.0, 0.015, 4, 4), lab)
