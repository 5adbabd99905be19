"""segment_bag (offline rosbag2 labelling) as a subprocess: outputs equal what the live
node publishes for the same frames, in both storage formats, locally and on a local Ray
cluster (also when a worker dies mid-run), and one-line refusals of bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from helpers import (
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

pytestmark = pytest.mark.ros
H, W, N = 96, 128, 6
TOPIC = '/cam/image'
T0, STAMP0 = 2_000_000_000_000, 1_800_000_000 * 10**9


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bag')
    sem = make_semantic_weights(tmp / 'sem.pt', num_classes=6)
    inst = make_instance_weights(tmp / 'inst.pt')
    params = ['device:=cpu', f'semantic.weights:={sem}', 'semantic.num_classes:=6',
              'semantic.input_size:=0', 'instance.enabled:=true', 'instance.backend:=torch',
              'instance.model:=maskrcnn_resnet50_fpn', f'instance.weights:={inst}',
              'instance.num_classes:=4', 'instance.score_threshold:=0.6',
              f'instance.min_size:={H}', f'instance.max_size:={W}', 'warmup:=false']
    frames = []
    for i in range(N):
        msg = image_msg(synthetic_image(H, W, seed=i), 'rgb8', STAMP0 + i * 50_000_000,
                        frame_id=f'cam{i}')
        if i == 3:  # a bad frame: data shorter than step x height
            msg.data = msg.data[:-5]
        frames.append((T0 + i * 40_000_000, i, msg))
    bags = {s: write_bag(tmp / f'in_{s}', s, TOPIC, frames) for s in ('sqlite3', 'mcap')}
    # what the live node publishes for the same good frames
    live = {}
    node_args = [a for p in params for a in ('-p', p)] + ['-r', f'image:={TOPIC}']
    for _node, client in serve_node(tmp, node_args):
        labels = client.collect(Image, '/segmentation/semantic/labels')
        dets = client.collect(Detection2DArray, '/segmentation/instances/detections')
        masks = client.collect(Image, '/segmentation/instances/masks')
        pub = client.node.create_publisher(Image, TOPIC, 10)
        for _, i, msg in frames:
            if i == 3:
                continue
            stamp = STAMP0 + i * 50_000_000
            assert client.exchange(pub, msg, [labels, dets, masks], timeout=60, resend=1.0)
            live[stamp] = (labels[stamp][0], dets[stamp][0], masks[stamp][0])
    yield tmp, params, bags, frames, live


def segment_bag(*args, env=None, timeout=300, fault=()):
    """Run segment_bag; ``fault`` (e.g. ('--die-once', MARKER)) runs it through
    seg_ros.testing.faults, whose Ray worker of chunk 1 dies."""
    full = dict(os.environ, ROS_DOMAIN_ID=str(fresh_domain_id()), OMP_NUM_THREADS='1',
                **(env or {}))
    module = ['seg_ros.testing.faults', *map(str, fault)] if fault else \
        ['seg_ros.offline.segment_bag']
    return subprocess.run([sys.executable, '-m', *module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full)


def run_ok(setup, storage, out_name, *extra, env=None, fault=()):
    tmp, params, bags, _, _ = setup
    out = tmp / out_name
    args = [bags[storage], out, '--image-topic', TOPIC, '--json', tmp / f'{out_name}.json',
            *[a for p in params for a in ('-p', p)], *extra]
    res = segment_bag(*args, env=env, fault=fault)
    assert res.returncode == 0, res.stdout + res.stderr
    return out, json.loads((tmp / f'{out_name}.json').read_text())


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_output_equals_the_live_node(setup, storage):
    tmp, _, _, frames, live = setup
    out, summary = run_ok(setup, storage, f'out_{storage}', '--copy-input')
    assert (summary['frames_in'], summary['frames_processed']) == (N, N - 1)
    assert summary['drops'] == {'data_size': 1} and summary['storage'] == storage
    assert summary['dropped_frames'] == [{'index': 3, 'receive_time_ns': frames[3][0],
                                          'reasons': ['data_size']}]
    assert any(out.glob('*.mcap')) == (storage == 'mcap')
    bag = read_bag(out)
    recv = {msg.header.frame_id: t for t, _, msg in frames}
    assert [t for t, _, _ in bag[TOPIC]] == [t for t, _, _ in frames]  # --copy-input
    assert len(bag['/segmentation/semantic/label_info']) == 1
    assert len(bag['/segmentation/instances/label_info']) == 1
    got = {}
    for topic, mtype in (('semantic/labels', Image), ('instances/detections', Detection2DArray),
                         ('instances/masks', Image)):
        rows = bag[f'/segmentation/{topic}']
        assert len(rows) == N - 1
        for t, _, raw in rows:
            msg = deserialize_message(raw, mtype)
            assert t == recv[msg.header.frame_id]  # written at its input's receive time
            got.setdefault(topic, {})[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] \
                = msg
    assert sorted(got['semantic/labels']) == sorted(live)
    for stamp, (labels, dets, masks) in live.items():
        assert bytes(got['semantic/labels'][stamp].data) == bytes(labels.data)  # byte-equal
        assert got['semantic/labels'][stamp].header == labels.header
        assert bytes(got['instances/masks'][stamp].data) == bytes(masks.data)
        assert got['instances/detections'][stamp] == dets
    assert any(d.detections for _, d, _ in live.values()), 'no detection: test means little'


def test_ray_two_workers_equal_output_even_when_a_worker_dies(setup):
    tmp = setup[0]
    local, _ = run_ok(setup, 'mcap', 'ray_ref')
    marker = tmp / 'killed.pid'
    out, summary = run_ok(setup, 'mcap', 'ray_out', '--ray', '--workers', '2', '--chunk', '2',
                          fault=('--die-once', marker))
    assert marker.is_file(), 'the fault hook did not fire: the test would mean little'
    assert summary['ray'] and summary['workers'] == 2 and summary['frames_processed'] == N - 1
    ref, got = read_bag(local), read_bag(out)
    assert sorted(ref) == sorted(got)
    types = {'/segmentation/semantic/labels': Image, '/segmentation/instances/masks': Image,
             '/segmentation/instances/detections': Detection2DArray,
             '/segmentation/semantic/label_info': LabelInfo,
             '/segmentation/instances/label_info': LabelInfo}
    assert set(ref) == set(types)
    for topic, mtype in types.items():  # every frame exactly once, in input order, equal
        # (messages compared, not CDR bytes: alignment padding bytes are not defined)
        assert [(t, deserialize_message(raw, mtype)) for t, _, raw in got[topic]] == \
            [(t, deserialize_message(raw, mtype)) for t, _, raw in ref[topic]], topic


def test_bad_input_is_one_line(setup, tmp_path):
    _, _, bags, _, _ = setup
    cases = [
        ([tmp_path / 'nothing', tmp_path / 'o1', '--image-topic', TOPIC], 'cannot read'),
        ([bags['mcap'], tmp_path / 'o2', '--image-topic', '/nope'], f'it has: {TOPIC}'),
        ([bags['mcap'], bags['sqlite3'], '--image-topic', TOPIC], 'exists (use --overwrite)'),
        ([bags['mcap'], tmp_path / 'o3', '--image-topic', TOPIC, '-p', 'devcie:=cpu',
          '-p', 'semantic.input_size:=-7'], 'semantic.input_size'),
        ([bags['mcap'], tmp_path / 'o4', '--image-topic', TOPIC, '-p', 'warmup:=false',
          '-p', 'semantic.backend:=torch', '-p', 'cameras:=[a, b]'],
         'cameras parameter does not match'),
    ]
    for args, expect in cases:
        res = segment_bag(*args, timeout=120)
        assert res.returncode == 2, res.stdout + res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith('segment_bag:')]
        assert len(lines) == 1 and expect in lines[0], res.stderr
        assert 'Traceback' not in res.stderr
    assert np.all([not (tmp_path / o).exists() for o in ('o1', 'o2', 'o3', 'o4')])


def test_ros2_run_finds_it():
    res = subprocess.run(['ros2', 'run', 'seg_ros', 'segment_bag', '--help'],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert '--image-topic' in res.stdout and '--ray' in res.stdout


def test_depth_3d_offline(tmp_path):
    from vision_msgs.msg import Detection3DArray

    from seg_ros.synthetic.rgbd_scene import render

    from helpers import camera_info_msg, depth_msg
    sc = render(W, H)
    frames, depth, info = [], [], []
    for i in range(3):
        stamp, t = STAMP0 + i * 10**8, T0 + i * 10**8
        frames.append((t + 1000, i, image_msg(sc.rgb, 'rgb8', stamp)))
        if i != 1:  # frame 1 has no depth: 2D only, counted as no_depth
            depth.append((t, depth_msg(sc.depth_16uc1(), '16UC1', stamp + 3_000_000)))
        info.append((t, camera_info_msg(sc.k, sc.p, W, H, stamp)))
    bag = write_bag(tmp_path / 'rgbd', 'sqlite3', TOPIC, frames,
                    {'/cam/depth': depth, '/cam/info': info})
    inst = make_instance_weights(tmp_path / 'inst.pt')
    res = segment_bag(bag, tmp_path / 'out', '--image-topic', TOPIC, '--depth-topic',
                      '/cam/depth', '--camera-info-topic', '/cam/info', '--copy-input',
                      '-p', 'device:=cpu', '-p', 'semantic.enabled:=false',
                      '-p', 'instance.enabled:=true', '-p', 'instance.backend:=torch',
                      '-p', 'instance.model:=maskrcnn_resnet50_fpn',
                      '-p', f'instance.weights:={inst}', '-p', 'instance.num_classes:=4',
                      '-p', 'instance.score_threshold:=0.6', '-p', f'instance.min_size:={H}',
                      '-p', f'instance.max_size:={W}', '-p', 'depth.enabled:=true',
                      # torchvision's 1000 proposals: few of the random test weights' boxes
                      # score >= 0.6
                      '-p', 'instance.max_proposals:=0')
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout[res.stdout.index('{'):])
    assert summary['drops'] == {'no_depth': 1} and summary['frames_processed'] == 3
    out = read_bag(tmp_path / 'out')
    d3 = [deserialize_message(raw, Detection3DArray)
          for _, _, raw in out['/segmentation/instances/detections_3d']]
    assert [d.header.stamp.nanosec for d in d3] == [0, 200_000_000]
    assert any(d.detections for d in d3)
    # each position is the median of its mask's points from the depth sent (mm), to 1 mm
    masks = {m.header.stamp.nanosec: m for m in (
        deserialize_message(raw, Image) for _, _, raw in out['/segmentation/instances/masks'])}
    z_m = sc.depth_16uc1().astype(np.float32) * np.float32(0.001)
    fx, cx, fy, cy = sc.p[0], sc.p[2], sc.p[5], sc.p[6]
    for d in d3:
        ids = image_to_array(masks[d.header.stamp.nanosec])[:, :, 0]
        for det in d.detections:
            v, u = np.nonzero(ids == int(det.id))
            z = z_m[v, u].astype(np.float64)
            pts = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], 1)
            pos = det.results[0].pose.pose.position
            assert np.allclose([pos.x, pos.y, pos.z], np.median(pts, 0), atol=1e-3)
            # on the table (0.8 m away) or on an object standing on it (<= 0.2 m tall)
            assert 0.6 - 1e-3 <= pos.z <= 0.8 + 1e-3
    assert len(out['/segmentation/instances/points']) == 2
    assert len(out['/cam/depth']) == 2 and len(out['/cam/info']) == 3  # --copy-input


def test_compressed_input(tmp_path):
    import io

    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage
    frames = []
    for i in range(3):
        buf = io.BytesIO()
        PILImage.fromarray(synthetic_image(H, W, seed=i)).save(buf, format='PNG')
        msg = CompressedImage(format='png', data=buf.getvalue())
        msg.header.stamp.sec = 100 + i
        frames.append((T0 + i, i, msg))
    bag = write_bag(tmp_path / 'png', 'mcap', '/cam/image/compressed', frames)
    res = segment_bag(bag, tmp_path / 'out', '--image-topic', '/cam/image/compressed',
                      '-p', 'device:=cpu', '-p', 'semantic.input_size:=0')
    assert res.returncode == 0, res.stderr
    out = read_bag(tmp_path / 'out')
    labels = [deserialize_message(raw, Image) for _, _, raw in
              out['/segmentation/semantic/labels']]
    assert [m.header.stamp.sec for m in labels] == [100, 101, 102]
    assert all((m.width, m.height, m.encoding) == (W, H, 'mono8') for m in labels)


def test_ray_worker_that_keeps_dying_ends_the_run_cleanly(setup):
    tmp, params, bags, _, _ = setup
    out = tmp / 'ray_dead'
    res = segment_bag(bags['mcap'], out, '--image-topic', TOPIC, '--ray', '--workers', '1',
                      '--chunk', '2', *[a for p in params for a in ('-p', p)],
                      fault=('--die-always',), timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith('segment_bag:')]
    assert len(lines) == 1 and 'Ray failed' in lines[0], res.stderr
    assert 'Traceback' not in res.stderr and not out.exists()


def test_several_cameras_in_one_bag(setup, tmp_path):
    """--image-topic CAM=TOPIC twice: each camera's outputs under /segmentation/CAM/, the
    front camera's equal to the live single-camera node's for the same frames."""
    _, params, _, frames, live = setup
    rear = [(t + 7_000_000, i, image_msg(synthetic_image(H, W, seed=50 + i), 'rgb8',
                                         STAMP0 + i * 50_000_000 + 1, frame_id=f'rear{i}'))
            for t, i, _ in frames]
    bag = write_bag(tmp_path / 'two', 'mcap', TOPIC, frames,
                    extra={'/rear/image': [(t, m) for t, _, m in rear]})
    out = tmp_path / 'two_out'
    res = segment_bag(bag, out, '--image-topic', f'front={TOPIC}', '--image-topic',
                      'rear=/rear/image', '--json', tmp_path / 's.json',
                      *[a for p in params for a in ('-p', p)])
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / 's.json').read_text())
    assert summary['frames_in'] == 2 * N and summary['frames_processed'] == 2 * N - 1
    assert summary['image_topic'] == {'front': TOPIC, 'rear': '/rear/image'}
    got = read_bag(out)
    assert len(got['/segmentation/semantic/label_info']) == 1  # shared
    assert '/segmentation/semantic/labels' not in got
    front = {deserialize_message(raw, Image).header.stamp.sec * 10**9
             + deserialize_message(raw, Image).header.stamp.nanosec: deserialize_message(
                 raw, Image) for _, _, raw in got['/segmentation/front/semantic/labels']}
    assert sorted(front) == sorted(live)
    for stamp, (labels, _dets, _masks) in live.items():
        assert bytes(front[stamp].data) == bytes(labels.data)
    rear_out = [deserialize_message(raw, Image) for _, _, raw in
                got['/segmentation/rear/semantic/labels']]
    assert [m.header.frame_id for m in rear_out] == [f'rear{i}' for i in range(N)]
    assert len(got['/segmentation/rear/instances/detections']) == N
    # the two forms do not mix
    res = segment_bag(bag, tmp_path / 'o', '--image-topic', f'front={TOPIC}',
                      '--image-topic', '/rear/image', timeout=120)
    assert res.returncode == 2 and 'not both' in res.stderr, res.stderr
