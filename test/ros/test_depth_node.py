"""segment_node with depth.enabled over DDS: every 3D rule checked against an independent
numpy computation from the published masks/labels, the depth sent and the intrinsics.

Real models (random-weights LR-ASPP and Mask R-CNN), real DDS, the node in its own process.
Tests run in file order: the first one sees the node before any camera_info.
"""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from sensor_msgs_py import point_cloud2
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from helpers import (
    camera_info_msg,
    depth_msg,
    image_msg,
    image_to_array,
    make_instance_weights,
    make_semantic_weights,
    serve_node,
    synthetic_image,
)

pytestmark = pytest.mark.ros
H, W = 120, 160
NODE = '/segmentation'
FX, FY, CX, CY = 150.0, 155.0, 80.3, 59.7
K = [140.0, 0, 79.5, 0, 141.0, 59.5, 0, 0, 1]          # differs from p: p must be used
P = [FX, 0, CX, 0, 0, FY, CY, 0, 0, 0, 1, 0]
Z_MIN, Z_MAX, MIN_POINTS, STRIDE = 0.3, 3.0, 20, 2
BASE = 1_900_000_000 * 10**9


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('depth')
    sem = make_semantic_weights(tmp / 'sem.pt', num_classes=6)
    inst = make_instance_weights(tmp / 'inst.pt')
    args = ['-r', 'image:=/cam/color/image_raw', '-r', 'depth:=/cam/depth/image',
            '-r', 'camera_info:=/cam/color/camera_info',
            '-p', 'device:=cpu', '-p', f'semantic.weights:={sem}',
            '-p', 'semantic.num_classes:=6', '-p', 'semantic.input_size:=0',
            '-p', 'instance.enabled:=true',
            '-p', 'instance.backend:=torch', '-p', 'instance.model:=maskrcnn_resnet50_fpn',
            '-p', f'instance.weights:={inst}', '-p', 'instance.num_classes:=4',
            '-p', 'instance.score_threshold:=0.6', '-p', 'instance.min_size:=120',
            '-p', 'instance.max_size:=160', '-p', 'depth.enabled:=true',
            '-p', f'depth.min:={Z_MIN}', '-p', f'depth.max:={Z_MAX}',
            '-p', f'depth.min_points:={MIN_POINTS}', '-p', f'depth.stride:={STRIDE}',
            '-p', 'diagnostics_period:=0.3']
    for node, client in serve_node(tmp, args):
        c = client.collect
        boxes = {'dets': c(Detection2DArray, f'{NODE}/instances/detections'),
                 'masks': c(Image, f'{NODE}/instances/masks'),
                 'labels': c(Image, f'{NODE}/semantic/labels'),
                 'det3d': c(Detection3DArray, f'{NODE}/instances/detections_3d'),
                 'ipts': c(PointCloud2, f'{NODE}/instances/points'),
                 'spts': c(PointCloud2, f'{NODE}/semantic/points')}
        diags, markers = [], []
        client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
        client.node.create_subscription(MarkerArray, f'{NODE}/instances/markers',
                                        markers.append, 10)
        pubs = {'image': client.node.create_publisher(Image, '/cam/color/image_raw', 10),
                'depth': client.node.create_publisher(Image, '/cam/depth/image', 10),
                'info': client.node.create_publisher(CameraInfo, '/cam/color/camera_info', 10)}
        yield node, client, pubs, boxes, diags, markers


def exchange(rig, stamp, rgb, depth=None, info=None, want=('dets', 'masks', 'labels'),
             timeout=60.0):
    """Publish (camera_info, depth, colour) every 1.5 s until every wanted box answers."""
    node, client, pubs, boxes, *_ = rig
    last = [0.0]

    def step():
        if time.perf_counter() - last[0] > 1.5:
            last[0] = time.perf_counter()
            if info is not None:
                pubs['info'].publish(info)
            if depth is not None:
                pubs['depth'].publish(depth)
            client.spin_until(lambda: False, 0.05)  # let depth arrive before the colour
            pubs['image'].publish(image_msg(rgb, 'rgb8', stamp))
    assert client.spin_until(lambda: all(stamp in boxes[b] for b in want), timeout, step), \
        node.log()[-3000:]
    return {b: boxes[b][stamp][0] for b in boxes if stamp in boxes[b]}


def drops(rig, reason, at_least=1, timeout=5.0):
    node, client, _, _, diags, _ = rig

    def count():
        for d in reversed(diags):
            for s in d.status:
                for kv in s.values:
                    if kv.key == f'drops.{reason}':
                        return int(kv.value)
        return 0
    client.spin_until(lambda: count() >= at_least, timeout)
    return count()


def exchange_fresh(rig, stamp, rgb, depth, want=('dets', 'masks', 'labels'), timeout=60.0):
    """As :func:`exchange`, but every re-send is a new frame (``stamp + k`` ns): the frame
    answered was processed before anything this test sends afterwards (a later re-sent
    copy may meet a camera_info sent since, and rightly get 3D). Returns (stamp, answers)."""
    node, client, pubs, boxes, *_ = rig
    sent, last = [], [0.0]

    def step():
        if time.perf_counter() - last[0] > 1.5:
            last[0] = time.perf_counter()
            pubs['depth'].publish(depth)
            client.spin_until(lambda: False, 0.05)  # let depth arrive before the colour
            sent.append(stamp + len(sent))
            pubs['image'].publish(image_msg(rgb, 'rgb8', sent[-1]))

    def done():
        return next((s for s in sent if all(s in boxes[b] for b in want)), None)
    assert client.spin_until(lambda: done() is not None, timeout, step), node.log()[-3000:]
    got = done()
    return got, {b: boxes[b][got][0] for b in boxes if got in boxes[b]}


def no_3d_for(rig, stamp):
    """True when ``stamp`` got no 3D answer: a later frame with good depth and camera_info
    is answered in 3D first (one publisher per topic delivers in order, so a late 3D
    message of ``stamp`` would have come before it)."""
    later = stamp + 50_000_000
    z = np.full((H, W), 1000, np.uint16)
    exchange(rig, later, synthetic_image(H, W, seed=1), depth_msg(z, '16UC1', later),
             camera_info_msg(K, P, W, H, later), want=('dets', 'det3d'))
    return stamp not in rig[3]['det3d'] and stamp not in rig[3]['ipts']


def scene_depth(seed=0, h=H, w=W):
    """Metres: a tilted plane with noise, and invalid / out-of-range pixels sprinkled."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    z = 0.8 + 0.6 * x / w + 0.3 * y / h + rng.normal(0, 0.02, (h, w))
    z[rng.random((h, w)) < 0.05] = 0.0        # invalid
    z[rng.random((h, w)) < 0.03] = 0.1        # below depth.min
    z[rng.random((h, w)) < 0.03] = 5.0        # beyond depth.max
    return z


def reference(z_m, masks, dets, labels, rgb):
    """What the rules say, computed here with numpy only."""
    out = {}
    for d in dets.detections:
        v, u = np.nonzero(masks == int(d.id))
        zz = z_m[v, u].astype(np.float64)
        ok = np.isfinite(zz) & (zz >= Z_MIN) & (zz <= Z_MAX)
        v, u, zz = v[ok], u[ok], zz[ok]
        pts = np.stack([(u - CX) * zz / FX, (v - CY) * zz / FY, zz], 1)
        out[d.id] = pts
    gv, gu = np.mgrid[0:H:STRIDE, 0:W:STRIDE]
    gz = z_m[gv, gu].astype(np.float64)
    ok = np.isfinite(gz) & (gz >= Z_MIN) & (gz <= Z_MAX)
    return out, ok.sum()


def check_3d(got, z_m, rgb):
    masks = image_to_array(got['masks'])[:, :, 0]
    labels = image_to_array(got['labels'])[:, :, 0]
    dets, det3d = got['dets'], got['det3d']
    per_id, n_sem = reference(z_m, masks, dets, labels, rgb)
    assert det3d.header == dets.header
    by_id = {d.id: d for d in det3d.detections}
    expected = [d.id for d in dets.detections if len(per_id[d.id]) >= MIN_POINTS]
    assert [d.id for d in det3d.detections] == expected
    assert expected, 'no instance with depth: the test would not mean much'
    for d2 in dets.detections:
        if d2.id not in by_id:
            continue
        d3, pts = by_id[d2.id], per_id[d2.id]
        assert d3.results[0].hypothesis == d2.results[0].hypothesis
        pos = d3.results[0].pose.pose.position
        assert np.allclose([pos.x, pos.y, pos.z], np.median(pts, 0), atol=1e-3)
        lo, hi = np.percentile(pts, 2, 0), np.percentile(pts, 98, 0)
        c, s = d3.bbox.center, d3.bbox.size
        assert np.allclose([c.position.x, c.position.y, c.position.z], (lo + hi) / 2, atol=1e-3)
        assert np.allclose([s.x, s.y, s.z], hi - lo, atol=1e-3)
        assert c.orientation.w == 1.0
    # instance cloud: every point's id is the id image at its pixel; counts per id
    cloud = point_cloud2.read_points(got['ipts'], field_names=('x', 'y', 'z', 'id'))
    assert got['ipts'].header == dets.header and got['ipts'].height == 1
    assert len(cloud) == sum(len(p) for p in per_id.values())
    u = np.rint(cloud['x'] * FX / cloud['z'] + CX).astype(int)
    v = np.rint(cloud['y'] * FY / cloud['z'] + CY).astype(int)
    assert np.array_equal(masks[v, u], cloud['id'])
    for ident, pts in per_id.items():
        assert (cloud['id'] == int(ident)).sum() == len(pts)
    # semantic cloud: stride grid, label and colour of the pixel
    sc = point_cloud2.read_points(got['spts'], field_names=('x', 'y', 'z', 'label', 'rgb'))
    assert len(sc) == n_sem
    u = np.rint(sc['x'] * FX / sc['z'] + CX).astype(int)
    v = np.rint(sc['y'] * FY / sc['z'] + CY).astype(int)
    assert (u % STRIDE == 0).all() and (v % STRIDE == 0).all()
    assert np.array_equal(labels[v, u], sc['label'])
    assert np.allclose(sc['z'], z_m[v, u], atol=1e-6)
    packed = np.ascontiguousarray(sc['rgb']).view(np.uint32)
    c = rgb[v, u].astype(np.uint32)
    assert np.array_equal(packed, (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2])


def test_without_camera_info_2d_continues_and_3d_is_counted(rig):
    rgb = synthetic_image(H, W, seed=1)
    z = scene_depth()
    stamp, got = exchange_fresh(rig, BASE, rgb, depth_msg(np.rint(z * 1000), '16UC1', BASE))
    assert 'det3d' not in got
    assert drops(rig, 'no_camera_info') >= 1
    assert no_3d_for(rig, stamp)


def test_16uc1_millimetres(rig):
    rgb = synthetic_image(H, W, seed=1)
    z = scene_depth()
    mm = np.rint(z * 1000).astype(np.uint16)
    stamp = BASE + 10**8
    got = exchange(rig, stamp, rgb, depth_msg(mm, '16UC1', stamp),
                   camera_info_msg(K, P, W, H, stamp), want=('dets', 'masks', 'labels',
                                                             'det3d', 'ipts', 'spts'))
    z_m = mm.astype(np.float32) * np.float32(0.001)
    z_m[mm == 0] = np.nan
    check_3d(got, z_m, rgb)
    # markers (someone subscribes): DELETEALL, then a box and a text per Detection3D
    client, markers = rig[1], rig[5]
    client.spin_until(lambda: any(m.markers[0].header.stamp == got['det3d'].header.stamp
                                  for m in markers), 10)
    arr = next(m for m in markers if m.markers[0].header.stamp == got['det3d'].header.stamp)
    assert arr.markers[0].action == Marker.DELETEALL
    boxes = [m for m in arr.markers if m.type == Marker.CUBE]
    assert [m.id for m in boxes] == [int(d.id) for d in got['det3d'].detections]
    assert len(arr.markers) == 1 + 2 * len(got['det3d'].detections)
    d0 = got['det3d'].detections[0]
    assert boxes[0].scale.x == pytest.approx(max(d0.bbox.size.x, 1e-3))


def test_32fc1_metres_with_nan_and_half_size_resampled(rig):
    rgb = synthetic_image(H, W, seed=2)
    half = scene_depth(seed=3, h=H // 2, w=W // 2).astype(np.float32)
    half[::7, ::3] = np.nan
    stamp = BASE + 2 * 10**8
    got = exchange(rig, stamp, rgb, depth_msg(half, '32FC1', stamp + 5_000_000),  # 5 ms off
                   camera_info_msg(K, P, W, H, stamp), want=('dets', 'masks', 'labels',
                                                             'det3d', 'ipts', 'spts'))
    full = half[np.arange(H) // 2][:, np.arange(W) // 2]  # nearest, floor(dst * in / out)
    full = np.where(full == 0, np.nan, full)
    check_3d(got, full, rgb)


def test_unregistered_depth_refused_and_no_depth_counted(rig):
    node = rig[0]
    rgb = synthetic_image(H, W, seed=1)
    stamp = BASE + 3 * 10**8
    wide = np.full((H // 2, W), 1000, np.uint16)  # 2:1 beside 4:3
    got = exchange(rig, stamp, rgb, depth_msg(wide, '16UC1', stamp))
    assert 'det3d' not in got
    assert drops(rig, 'depth_not_registered') >= 1
    assert 'depth_image_proc' in node.log()
    assert no_3d_for(rig, stamp)
    stamp += 10**8
    far = depth_msg(np.full((H, W), 1000, np.uint16), '16UC1', stamp + 10**8)  # 0.1 s off
    got = exchange(rig, stamp, rgb, far)
    assert 'det3d' not in got
    assert drops(rig, 'no_depth') >= 1
    assert no_3d_for(rig, stamp)


def test_hostile_depth_and_camera_info_survive(rig):
    node, client, pubs, boxes, *_ = rig
    stamp = BASE + 6 * 10**8
    good = depth_msg(np.full((H, W), 1000, np.uint16), '16UC1', stamp)
    bad = []
    for field, value in (('encoding', 'mono8'), ('encoding', '\x00' * 500),
                         ('step', 1), ('height', 60000), ('width', 2**31 - 1)):
        m = depth_msg(np.full((H, W), 1000, np.uint16), '16UC1', stamp)
        setattr(m, field, value)
        bad.append(m)
    short = depth_msg(np.full((H, W), 1000, np.uint16), '16UC1', stamp)
    short.data = short.data[:-3]
    bad.append(short)
    before = drops(rig, 'bad_depth', 0, 0)
    for i, m in enumerate(bad, 1):  # one at a time, each counted before the next is sent
        pubs['depth'].publish(m)
        assert drops(rig, 'bad_depth', before + i, 10) == before + i, (i, node.log()[-3000:])
    before = drops(rig, 'bad_camera_info', 0, 0)
    for i, (k, p) in enumerate(((K, [0.0, 0, CX, 0, 0, FY, CY, 0, 0, 0, 1, 0]),  # fx = 0
                                ([0.0] * 9, [0.0] * 12),
                                ([float('nan')] * 9, [float('inf')] * 12)), 1):
        pubs['info'].publish(camera_info_msg(k, p, W, H, stamp))
        assert drops(rig, 'bad_camera_info', before + i, 10) == before + i, i
    assert node.alive(), node.log()[-3000:]
    # and the node still answers, 3D included, once good inputs come
    got = exchange(rig, stamp, synthetic_image(H, W, seed=1), good,
                   camera_info_msg(K, P, W, H, stamp),
                   want=('dets', 'masks', 'det3d', 'ipts', 'spts'))
    assert got['det3d'].header.stamp == got['dets'].header.stamp
