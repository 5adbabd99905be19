"""3D from depth in the pure layer, against independent numpy computations (no ROS)."""
import numpy as np
import pytest
import torch

from seg_ros.core.inference.results import FrameResult, InstanceResult, SemanticResult
from seg_ros.core.spatial import geometry as g
from seg_ros.core.spatial import quantiles
from seg_ros.synthetic.rgbd_scene import Box, Cylinder, render

K = [500.0, 0, 319.5, 0, 510.0, 239.5, 0, 0, 1]
P = [520.0, 0, 320.0, 0, 0, 530.0, 241.0, 0, 0, 0, 1, 0]


def test_intrinsics_from_p_then_k_and_refusals():
    assert g.intrinsics_from(K, P) == g.Intrinsics(520.0, 530.0, 320.0, 241.0)
    assert g.intrinsics_from(K, [0.0] * 12) == g.Intrinsics(500.0, 510.0, 319.5, 239.5)
    for k, p, why in (([0.0] * 9, [0.0] * 12, 'all zero'),
                      (K, [0.0] + P[1:], 'focal length'),
                      (K, [float('nan')] + P[1:], 'non-finite'),
                      (K[:8], P, '9 expected')):
        with pytest.raises(g.GeometryError, match=why) as e:
            g.intrinsics_from(k, p)
        assert e.value.reason == 'bad_camera_info'
    assert g.intrinsics_from(K, P, 640, 480, (480, 640)).fx == 520.0
    assert g.intrinsics_from(K, P, 0, 0, (480, 640)).fx == 520.0  # size not given
    with pytest.raises(g.GeometryError, match='colour image'):
        g.intrinsics_from(K, P, 320, 240, (480, 640))


def test_depth_array_units_and_refusals():
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    arr, scale = g.depth_array('16UC1', 2, 2, 4, False, mm.tobytes())
    assert scale == 0.001 and arr.tolist() == mm.tolist()
    m = np.array([[np.nan, 1.0], [2.5, 0.0]], np.float32)
    arr, scale = g.depth_array('32FC1', 2, 2, 8, True, m.astype('>f4').tobytes())
    assert scale == 1.0 and np.array_equal(arr, m, equal_nan=True)
    for enc, h, w, step, data, why in (('mono8', 2, 2, 2, b'\0' * 4, 'REP 118'),
                                       ('16UC1', 2, 2, 3, b'\0' * 6, 'step'),
                                       ('32FC1', 2, 2, 8, b'\0' * 15, 'bytes'),
                                       ('16UC1', 0, 2, 4, b'', 'zero size')):
        with pytest.raises(g.GeometryError, match=why) as e:
            g.depth_array(enc, h, w, step, False, data)
        assert e.value.reason == 'bad_depth'
    z = g.depth_to_metres(mm, 0.001, (2, 2), torch.device('cpu'))
    assert np.isnan(z[0, 0].item()) and z[1, 0].item() == pytest.approx(2.5)
    assert z[1, 1].item() == pytest.approx(65.535)


def test_registration_resamples_same_aspect_and_refuses_others():
    half = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    z = g.depth_to_metres(half, 1.0, (6, 8), torch.device('cpu')).numpy()
    rows, cols = np.arange(6) * 3 // 6, np.arange(8) * 4 // 8  # floor(dst * in / out)
    assert np.array_equal(z, half[rows][:, cols])
    with pytest.raises(g.GeometryError, match='depth_image_proc') as e:
        g.depth_to_metres(np.ones((480, 848), np.float32), 1.0, (480, 640), torch.device('cpu'))
    assert e.value.reason == 'depth_not_registered'


def reference_instance(depth_m, id_map, ident, fx, fy, cx, cy, lo, hi):
    v, u = np.nonzero(id_map == ident)
    z = depth_m[v, u].astype(np.float64)
    ok = np.isfinite(z) & (z >= lo) & (z <= hi)
    v, u, z = v[ok], u[ok], z[ok]
    pts = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], 1)
    if not len(pts):
        return pts, None, None, None
    return pts, np.median(pts, 0), np.percentile(pts, 2, 0), np.percentile(pts, 98, 0)


def test_instance_geometry_matches_numpy():
    rng = np.random.default_rng(0)
    h, w = 60, 80
    depth = rng.uniform(0.05, 3.0, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.1] = np.nan
    depth[rng.random((h, w)) < 0.1] = 0.0
    ids = np.array([7, 3, 65535, 12], np.int64)  # track ids; 12 has no pixel
    id_map = np.zeros((h, w), np.uint16)
    id_map[5:30, 10:40] = 7
    id_map[20:50, 30:70] = 3
    id_map[50:58, 2:9] = 65535
    intr = g.Intrinsics(70.0, 72.0, 39.5, 29.5)
    z = g.depth_to_metres(depth, 1.0, (h, w), torch.device('cpu'))
    geo = g.instance_geometry(z, id_map, ids, intr, 0.1, 2.5)
    for k, ident in enumerate(ids):
        pts, med, p2, p98 = reference_instance(depth, id_map, ident, 70.0, 72.0, 39.5, 29.5,
                                               0.1, 2.5)
        assert geo.counts[k] == len(pts)
        if len(pts):
            assert np.allclose(geo.position[k], med, atol=1e-5)
            assert np.allclose(geo.box_min[k], p2, atol=1e-5)
            assert np.allclose(geo.box_max[k], p98, atol=1e-5)
            mine = geo.points[geo.point_ids == ident]
            assert np.allclose(np.sort(mine, 0), np.sort(pts, 0), atol=1e-5)
        else:
            assert np.isnan(geo.position[k]).all()
    assert geo.points.shape[0] == geo.counts.sum()
    assert (geo.points[:, 2] >= 0.1).all() and (geo.points[:, 2] <= 2.5).all()


def test_semantic_points_on_the_stride_grid():
    rng = np.random.default_rng(1)
    h, w, s = 30, 44, 3
    depth = rng.uniform(0.0, 25.0, (h, w)).astype(np.float32)
    depth[::4, ::5] = np.nan
    labels = rng.integers(0, 300, (h, w)).astype(np.uint16)
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    intr = g.Intrinsics(40.0, 41.0, 21.0, 15.0)
    z = g.depth_to_metres(depth, 1.0, (h, w), torch.device('cpu'))
    sp = g.semantic_points(z, labels, image, intr, s, 0.1, 20.0)
    v, u = np.mgrid[0:h:s, 0:w:s]
    zz = depth[v, u]
    ok = np.isfinite(zz) & (zz >= 0.1) & (zz <= 20.0)
    v, u, zz = v[ok], u[ok], zz[ok]
    assert sp.points.shape == (ok.sum(), 3)
    assert np.allclose(sp.points, np.stack([(u - 21.0) * zz / 40.0, (v - 15.0) * zz / 41.0,
                                            zz], 1), atol=1e-5)
    assert np.array_equal(sp.labels, labels[v, u])
    c = rgb[v, u].astype(np.uint32)
    assert np.array_equal(sp.rgb, (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2])


def test_rendered_scene_is_exact_and_frame_3d_recovers_the_objects():
    objs = [Box(-0.1, 0.05, 0.08, 0.06, 0.15), Cylinder(0.12, -0.05, 0.04, 0.1)]
    sc = render(320, 240, objs, table_z=0.8)
    fx, cx, cy = sc.p[0], sc.p[2], sc.p[6]
    # the pixel under each object's centre sees its top at table_z - height
    for i, o in enumerate(objs, start=1):
        u, v = round(o.x / (0.8 - o.height) * fx + cx), round(o.y / (0.8 - o.height) * fx + cy)
        assert sc.object_map[v, u] == i
        assert sc.depth[v, u] == pytest.approx(0.8 - o.height, abs=1e-6)
    assert sc.depth[0, 0] == pytest.approx(0.8)
    # the 3D of the true masks: top of each object near its pose
    ids = np.array([1, 2])
    inst = InstanceResult(boxes=np.zeros((2, 4), np.float32), scores=np.ones(2, np.float32),
                          class_ids=np.ones(2, np.int64),
                          id_map=sc.object_map.astype(np.uint16), ids=ids)
    image = torch.from_numpy(sc.rgb).permute(2, 0, 1)[None].float() / 255
    res = FrameResult(semantic=SemanticResult(labels=sc.object_map, color=None),
                      instances=inst, image=image)
    out = g.frame_3d(res, sc.depth_16uc1(), 0.001, g.intrinsics_from(sc.k, sc.p), 0.1, 20.0, 2)
    for k, o in enumerate(objs):
        assert out.instances.position[k][:2] == pytest.approx([o.x, o.y], abs=0.01)
        assert out.instances.box_min[k][2] == pytest.approx(0.8 - o.height, abs=0.003)
    assert (out.semantic.labels == sc.object_map[::2, ::2].reshape(-1)).all()


def test_grouped_quantiles_cpu_and_device_paths_agree_with_numpy():
    """The CPU paths (compiled selection per group; numpy's per group without Numba) and
    the device path (two sorts, what CUDA runs) give numpy's quantiles per group and column;
    an empty group is NaN."""
    rng = np.random.default_rng(5)
    values = torch.from_numpy(rng.normal(size=(5000, 3)).astype(np.float32))
    values[:50] = 0.25  # ties
    groups = torch.from_numpy(rng.choice([0, 1, 3, 4, 6], size=5000))  # 2 and 5 empty
    qs = (0.5, 0.02, 0.98)
    for fn in (quantiles.grouped_quantiles, quantiles._grouped_quantiles_numpy,
               quantiles._grouped_quantiles_sorted):
        got, counts = fn(values, groups, 7, qs)
        assert got.shape == (3, 7, 3) and counts.tolist() == np.bincount(
            groups.numpy(), minlength=7).tolist()
        for k in range(7):
            sel = values.numpy()[groups.numpy() == k].astype(np.float64)
            if len(sel) == 0:
                assert torch.isnan(got[:, k]).all()
            else:
                np.testing.assert_allclose(got[:, k].numpy(), np.quantile(sel, qs, axis=0),
                                           rtol=0, atol=1e-12)
    empty, counts = quantiles.grouped_quantiles(values[:0], groups[:0], 3, qs)
    assert torch.isnan(empty).all() and counts.tolist() == [0, 0, 0]
