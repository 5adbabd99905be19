"""depth.target_frame over DDS: 3D outputs in the robot's frame through tf2, at the image's
stamp (a rotated, translated camera mount on a moving base), checked against numpy's rule
on the transformed points; no transform -> 2D only and counted; a bag with /tf gives the
live node's outputs."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from sensor_msgs_py import point_cloud2
from vision_msgs.msg import Detection2DArray, Detection3DArray

from helpers import (
    camera_info_msg,
    depth_msg,
    fresh_domain_id,
    image_msg,
    image_to_array,
    make_instance_weights,
    make_semantic_weights,
    read_bag,
    serve_node,
    synthetic_image,
    write_bag,
)

tf2_ros = pytest.importorskip('tf2_ros', reason='tf2_ros not built (scripts/setup: scripts/tf2)')
pytestmark = pytest.mark.ros
H, W = 120, 160
NODE = '/segmentation'
FX, FY, CX, CY = 150.0, 155.0, 80.3, 59.7
P = [FX, 0, CX, 0, 0, FY, CY, 0, 0, 0, 1, 0]
K = [FX, 0, CX, 0, FY, CY, 0, 0, 1]
Z_MIN, Z_MAX, MIN_POINTS = 0.3, 3.0, 20
BASE = 1_950_000_000 * 10**9
# camera optical frame 'cam' on a wrist: rotated 90 deg about x, then 30 deg about z, offset
MOUNT_T = (0.05, -0.02, 0.10)
MOUNT_Q = (0.6830127, 0.1830127, 0.1830127, 0.6830127)  # normalised (x, y, z, w)
# the wrist moves along base_link x: 0 at BASE, 0.4 m at BASE + 2 s (linear in between)
BASE_Q = (0.0, 0.0, 0.38268343, 0.92387953)  # 45 deg about z


def quat_matrix(q):
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def transform(parent, child, stamp_ns, t, q):
    ts = TransformStamped()
    ts.header.frame_id, ts.child_frame_id = parent, child
    ts.header.stamp.sec, ts.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = t
    r = ts.transform.rotation
    r.x, r.y, r.z, r.w = q
    return ts


def base_at(offset_s):
    return (0.4 * offset_s / 2.0, 0.0, 0.3)


def to_base(pts, offset_s):
    """Optical-frame points -> base_link at BASE + offset_s (the rule, in numpy)."""
    wrist = pts @ quat_matrix(MOUNT_Q).T + np.asarray(MOUNT_T)
    return wrist @ quat_matrix(BASE_Q).T + np.asarray(base_at(offset_s))


def scene_depth(seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    z = 0.8 + 0.6 * x / W + 0.3 * y / H + rng.normal(0, 0.02, (H, W))
    z[rng.random((H, W)) < 0.05] = 0.0
    return z


NODE_ARGS = ['-p', 'device:=cpu', '-p', 'semantic.num_classes:=6',
             '-p', 'semantic.input_size:=0', '-p', 'instance.enabled:=true',
             '-p', 'instance.backend:=torch',
             '-p', 'instance.model:=maskrcnn_resnet50_fpn', '-p', 'instance.num_classes:=4',
             '-p', 'instance.score_threshold:=0.6', '-p', f'instance.min_size:={H}',
             '-p', f'instance.max_size:={W}', '-p', 'depth.enabled:=true',
             '-p', f'depth.min:={Z_MIN}', '-p', f'depth.max:={Z_MAX}',
             '-p', f'depth.min_points:={MIN_POINTS}', '-p', 'depth.target_frame:=base_link',
             '-p', 'depth.tf_timeout:=0.5', '-p', 'diagnostics_period:=0.3']


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('tf')
    sem = make_semantic_weights(tmp / 'sem.pt', num_classes=6)
    inst = make_instance_weights(tmp / 'inst.pt')
    weights = ['-p', f'semantic.weights:={sem}', '-p', f'instance.weights:={inst}']
    args = [*NODE_ARGS, *weights, '-r', 'image:=/cam/image', '-r', 'depth:=/cam/depth',
            '-r', 'camera_info:=/cam/info']
    for node, client in serve_node(tmp, args):
        c = client.collect
        boxes = {'dets': c(Detection2DArray, f'{NODE}/instances/detections'),
                 'masks': c(Image, f'{NODE}/instances/masks'),
                 'labels': c(Image, f'{NODE}/semantic/labels'),
                 'det3d': c(Detection3DArray, f'{NODE}/instances/detections_3d'),
                 'ipts': c(PointCloud2, f'{NODE}/instances/points'),
                 'spts': c(PointCloud2, f'{NODE}/semantic/points')}
        diags = []
        client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
        pubs = {'image': client.node.create_publisher(Image, '/cam/image', 10),
                'depth': client.node.create_publisher(Image, '/cam/depth', 10),
                'info': client.node.create_publisher(CameraInfo, '/cam/info', 10)}
        static = tf2_ros.StaticTransformBroadcaster(client.node)
        static.sendTransform(transform('wrist', 'cam', 0, MOUNT_T, MOUNT_Q))
        moving = tf2_ros.TransformBroadcaster(client.node)
        yield {'node': node, 'client': client, 'boxes': boxes, 'pubs': pubs, 'diags': diags,
               'moving': moving, 'tmp': tmp, 'weights': weights}


def exchange(rig, stamp, rgb, z, frame_id='cam', want=('dets', 'masks', 'labels'),
             timeout=60.0, before=None):
    client, pubs, boxes = rig['client'], rig['pubs'], rig['boxes']
    last = [0.0]
    mm = np.rint(z * 1000).astype(np.uint16)

    def step():
        if time.perf_counter() - last[0] > 1.5:
            last[0] = time.perf_counter()
            if before is not None:
                before()
            pubs['info'].publish(camera_info_msg(K, P, W, H, stamp, frame_id))
            pubs['depth'].publish(depth_msg(mm, '16UC1', stamp, frame_id))
            client.spin_until(lambda: False, 0.05)
            pubs['image'].publish(image_msg(rgb, 'rgb8', stamp, frame_id=frame_id))
    assert client.spin_until(lambda: all(stamp in boxes[b] for b in want), timeout, step), \
        rig['node'].log()[-3000:]
    return {b: boxes[b][stamp][0] for b in boxes if stamp in boxes[b]}


def per_instance_points(z_m, masks, dets):
    out = {}
    for d in dets.detections:
        v, u = np.nonzero(masks == int(d.id))
        zz = z_m[v, u].astype(np.float64)
        ok = np.isfinite(zz) & (zz >= Z_MIN) & (zz <= Z_MAX)
        v, u, zz = v[ok], u[ok], zz[ok]
        out[d.id] = np.stack([(u - CX) * zz / FX, (v - CY) * zz / FY, zz], 1)
    return out


def test_3d_in_base_link_at_the_image_stamp(rig):
    """The moving base has a transform 1 s before and 1 s after the frame (the later one
    already there): positions and boxes are numpy's rule on points transformed with the
    transform interpolated at the stamp, to 1 mm; every 3D output is in base_link."""
    def broadcast():  # 0.0 m and 0.4 m: the frame at +1 s sits at 0.2 m
        rig['moving'].sendTransform([transform('base_link', 'wrist', BASE + k * 10**9,
                                               base_at(k), BASE_Q) for k in (0, 2)])
        rig['client'].spin_until(lambda: False, 0.2)
    rgb = synthetic_image(H, W, seed=1)
    z = scene_depth()
    stamp = BASE + 10**9
    got = exchange(rig, stamp, rgb, z, want=('dets', 'masks', 'labels', 'det3d', 'ipts',
                                             'spts'), before=broadcast)
    masks = image_to_array(got['masks'])[:, :, 0]
    z_m = np.rint(z * 1000).astype(np.uint16).astype(np.float32) * np.float32(0.001)
    z_m[z_m == 0] = np.nan
    per_id = per_instance_points(z_m, masks, got['dets'])
    det3d = got['det3d']
    for msg in (det3d, got['ipts'], got['spts']):
        assert msg.header.frame_id == 'base_link' and msg.header.stamp == got['dets'].header.stamp
    assert got['dets'].header.frame_id == 'cam'  # 2D keeps the image's header
    by_id = {d.id: d for d in det3d.detections}
    assert by_id, 'no instance with depth: the test would not mean much'
    for ident, d3 in by_id.items():
        pts = to_base(per_id[ident], 1.0)
        pos = d3.results[0].pose.pose.position
        assert np.allclose([pos.x, pos.y, pos.z], np.median(pts, 0), atol=1e-3)
        lo, hi = np.percentile(pts, 2, 0), np.percentile(pts, 98, 0)
        c, s = d3.bbox.center, d3.bbox.size
        assert np.allclose([c.position.x, c.position.y, c.position.z], (lo + hi) / 2, atol=1e-3)
        assert np.allclose([s.x, s.y, s.z], hi - lo, atol=1e-3)
        latest = np.median(to_base(per_id[ident], 2.0), 0)  # what "latest" would have given
        assert not np.allclose([pos.x, pos.y, pos.z], latest, atol=0.05)
    cloud = point_cloud2.read_points(got['ipts'], field_names=('x', 'y', 'z', 'id'))
    expect = np.concatenate([to_base(per_id[i], 1.0) for i in per_id if len(per_id[i])])
    assert len(cloud) == len(expect)
    got_pts = np.stack([cloud['x'], cloud['y'], cloud['z']], 1).astype(np.float64)
    assert np.allclose(np.sort(got_pts, 0), np.sort(expect, 0), atol=1e-4)
    rig['live'] = (stamp, rgb, z, got)


def drops(rig, reason):
    for d in reversed(rig['diags']):
        for s in d.status:
            for kv in s.values:
                if kv.key == f'drops.{reason}':
                    return int(kv.value)
    return 0


def test_no_transform_means_2d_only_and_a_counter(rig):
    rgb = synthetic_image(H, W, seed=2)
    stamp = BASE + 3 * 10**9
    got = exchange(rig, stamp, rgb, scene_depth(1), frame_id='unknown_camera')
    assert 'det3d' not in got and 'ipts' not in got
    client = rig['client']
    assert client.spin_until(lambda: drops(rig, 'no_transform') >= 1, 10)
    assert 'no transform from unknown_camera to base_link' in rig['node'].log()
    # a later frame in 'cam' (transforms known) is answered in 3D: one publisher per topic
    # delivers in order, so a late 3D answer of the unknown frame would have come first

    def broadcast():
        rig['moving'].sendTransform([transform('base_link', 'wrist', BASE + k * 10**9,
                                               base_at(k), BASE_Q) for k in (0, 2)])
        client.spin_until(lambda: False, 0.2)
    later = BASE + 1_500_000_000
    exchange(rig, later, rgb, scene_depth(1), want=('dets', 'det3d'), before=broadcast)
    assert stamp not in rig['boxes']['det3d'] and stamp not in rig['boxes']['ipts']


def test_a_bag_with_tf_gives_the_live_outputs(rig):
    if 'live' not in rig:
        pytest.skip('needs the live frame of test_3d_in_base_link_at_the_image_stamp')
    stamp, rgb, z, live = rig['live']
    mm = np.rint(z * 1000).astype(np.uint16)
    tmp = rig['tmp']
    from tf2_msgs.msg import TFMessage
    t0 = 10**18

    def tfm(*ts):
        return TFMessage(transforms=list(ts))
    bag = write_bag(tmp / 'tf_bag', 'mcap', '/cam/image',
                    [(t0 + 3 * 10**8, 0, image_msg(rgb, 'rgb8', stamp, frame_id='cam'))],
                    {'/tf_static': [(t0, tfm(transform('wrist', 'cam', 0, MOUNT_T, MOUNT_Q)))],
                     '/tf': [(t0 + 1, tfm(transform('base_link', 'wrist', BASE, base_at(0),
                                                    BASE_Q))),
                             (t0 + 6 * 10**8, tfm(transform('base_link', 'wrist',
                                                            BASE + 2 * 10**9, base_at(2),
                                                            BASE_Q)))],
                     '/cam/depth': [(t0 + 2 * 10**8, depth_msg(mm, '16UC1', stamp, 'cam'))],
                     '/cam/info': [(t0 + 10**8, camera_info_msg(K, P, W, H, stamp, 'cam'))]})
    out = tmp / 'tf_out'
    res = subprocess.run([sys.executable, '-m', 'seg_ros.offline.segment_bag', bag, out,
                          '--image-topic', '/cam/image', '--depth-topic', '/cam/depth',
                          '--camera-info-topic', '/cam/info', *NODE_ARGS, *rig['weights']],
                         capture_output=True, text=True, timeout=300,
                         env={**__import__('os').environ,
                              'ROS_DOMAIN_ID': str(fresh_domain_id())})
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout[res.stdout.index('{'):])
    assert summary['frames_processed'] == 1 and not summary['drops'], summary
    from rclpy.serialization import deserialize_message
    got = read_bag(out)
    (row,) = got['/segmentation/instances/detections_3d']
    offline = deserialize_message(row[2], Detection3DArray)
    assert offline.header == live['det3d'].header
    assert [d.id for d in offline.detections] == [d.id for d in live['det3d'].detections]
    for a, b in zip(offline.detections, live['det3d'].detections, strict=True):
        pa, pb = a.results[0].pose.pose.position, b.results[0].pose.pose.position
        assert np.allclose([pa.x, pa.y, pa.z], [pb.x, pb.y, pb.z], atol=1e-6)
        assert np.allclose([a.bbox.size.x, a.bbox.size.y, a.bbox.size.z],
                           [b.bbox.size.x, b.bbox.size.y, b.bbox.size.z], atol=1e-6)
