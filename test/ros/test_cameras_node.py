"""One node, several cameras (``cameras`` parameter), over real DDS: each camera's labels
are its own image's, batched frames, different sizes, fairness, isolation of bad input."""
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from seg_ros.ros.messages import stamp_ns

from helpers import (
    image_msg,
    image_to_array,
    make_semantic_weights,
    start_node,
    synthetic_image,
    torchvision_semantic_labels,
)

pytestmark = pytest.mark.ros
NUM_CLASSES = 6
CAMS = ('front', 'left', 'right')
BLOCKER = 'rear'  # a fourth camera, left idle (its status still appears)


def serve(tmp, weights, extra=()):
    args = ['-p', 'device:=cpu', '-p', f'semantic.weights:={weights}',
            '-p', 'semantic.input_size:=0', '-p', 'semantic.backend:=torch',
            '-p', f'cameras:=[{", ".join((*CAMS, BLOCKER))}]',
            '-r', 'left/image:=/car/left/image_raw',
            *extra]
    node, client = start_node(tmp, args)
    return node, client


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cams')
    weights = make_semantic_weights(tmp / 'sem.pt', num_classes=NUM_CLASSES)
    node, client = serve(tmp, weights)
    boxes = {c: client.collect(Image, f'/segmentation/{c}/semantic/labels') for c in CAMS}
    topics = {'front': '/front/image', 'left': '/car/left/image_raw', 'right': '/right/image',
              BLOCKER: f'/{BLOCKER}/image'}
    pubs = {c: client.node.create_publisher(Image, topics[c], 10) for c in topics}
    diags = []
    client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    assert client.spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()),
                             20)
    yield weights, node, client, boxes, pubs, diags
    client.close()
    assert node.stop() == 0, node.log()


def wait_answers(client, boxes, want: dict, timeout=60.0):
    return client.spin_until(lambda: all(k in boxes[c] for c, k in want.items()), timeout)


def send_together(client, pubs, msgs: dict, boxes):
    """Publish one frame per camera at once and wait for every answer."""
    for c, m in msgs.items():
        pubs[c].publish(m)
    want = {c: stamp_ns(m.header) for c, m in msgs.items()}
    assert wait_answers(client, boxes, want), {c: list(b) for c, b in boxes.items()}
    return {c: boxes[c][k][0] for c, k in want.items()}


def burst(client, pubs, boxes, rgbs: dict, stamp0: int, seconds: float = 2.0,
          period: float = 0.004):
    """Every camera publishes its own image every ``period`` s for ``seconds``: more frames
    than the model answers, so frames of several cameras wait together and run batched.
    Returns camera -> the stamps sent."""
    sent = {c: [] for c in rgbs}
    t0, i = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for j, (c, rgb) in enumerate(rgbs.items()):
            stamp = stamp0 + i * 1000 + j
            pubs[c].publish(image_msg(rgb, 'rgb8', stamp, frame_id=c))
            sent[c].append(stamp)
        i += 1
        client.spin_until(lambda: False, period)  # pacing
    # the newest frame of each camera always stays in its slot until served: wait for it
    assert client.spin_until(lambda: all(sent[c][-1] in boxes[c] for c in rgbs), 60), \
        {c: (sent[c][-1], sorted(boxes[c])[-3:]) for c in rgbs}
    return sent


def statuses_of(diags) -> dict:
    return {dict((kv.key, kv.value) for kv in s.values)['camera']: dict(
        (kv.key, kv.value) for kv in s.values) for s in diags[-1].status}


def test_each_camera_gets_its_own_labels_and_header(setup):
    weights, node, client, boxes, pubs, diags = setup
    h, w = 96, 128
    rgbs = {c: synthetic_image(h, w, seed=i + 1) for i, c in enumerate(CAMS)}
    refs = {c: torchvision_semantic_labels(weights, rgbs[c], NUM_CLASSES) for c in CAMS}
    before = statuses_of(diags) if diags else {}
    sent = burst(client, pubs, boxes, rgbs, 100 * 10**9)
    for c in CAMS:
        answered = [boxes[c][k][0] for k in sent[c] if k in boxes[c]]
        assert answered, c
        for msg in answered:  # every answer is its own camera's image, with its header
            labels = image_to_array(msg)[:, :, 0]
            assert msg.header.frame_id == c
            assert (labels == refs[c]).mean() >= 0.999, c
            assert all((labels == refs[o]).mean() < 0.95 for o in CAMS if o != c), c
    # frames did share forward passes, and every camera has its own status
    assert client.spin_until(lambda: diags and len(diags[-1].status) == 4, 5)
    def batched_in_burst():
        return sum(int(statuses_of(diags)[c]['frames_batched']) for c in CAMS) - sum(
            int(before.get(c, {}).get('frames_batched', 0)) for c in CAMS)
    # at least one batch of three frames (or two of two): fails with max_batch 1
    assert client.spin_until(lambda: batched_in_burst() >= 3, 10), batched_in_burst()
    statuses = statuses_of(diags)
    assert set(statuses) == {*CAMS, BLOCKER}
    assert statuses['left']['input_topic'] == '/car/left/image_raw'
    # one frame each, the newest: exactly the header sent
    msgs = {c: image_msg(rgbs[c], 'rgb8', (200 + i) * 10**9, frame_id=f'{c}_x')
            for i, c in enumerate(CAMS)}
    got = send_together(client, pubs, msgs, boxes)
    for c in CAMS:
        assert got[c].header == msgs[c].header


def test_different_sizes_in_one_window(setup):
    weights, node, client, boxes, pubs, _ = setup
    sizes = {'front': (72, 96), 'left': (120, 160), 'right': (72, 96)}
    rgbs = {c: synthetic_image(*sizes[c], seed=5 + i) for i, c in enumerate(CAMS)}
    sent = burst(client, pubs, boxes, rgbs, 300 * 10**9, seconds=1.5)
    for c in CAMS:
        want = torchvision_semantic_labels(weights, rgbs[c], NUM_CLASSES)
        answered = [boxes[c][k][0] for k in sent[c] if k in boxes[c]]
        assert answered, c
        for msg in answered:
            labels = image_to_array(msg)[:, :, 0]
            assert labels.shape == sizes[c]
            assert (labels == want).mean() >= 0.999, c


def test_bad_frame_on_one_camera_leaves_the_others_alone(setup):
    weights, node, client, boxes, pubs, diags = setup
    bad = image_msg(synthetic_image(72, 96), 'rgb8', 400 * 10**9)
    bad.encoding = '32FC1'
    bad.step = 7
    pubs['left'].publish(bad)
    msgs = {c: image_msg(synthetic_image(72, 96, 7), 'rgb8', 401 * 10**9) for c in
            ('front', 'right')}
    got = send_together(client, pubs, msgs, boxes)
    assert set(got) == {'front', 'right'} and 400 * 10**9 not in boxes['left']

    def drops(d, cam):
        s = next(s for s in d.status if s.name.endswith(f'segmentation {cam}'))
        return {kv.key: kv.value for kv in s.values if kv.key.startswith('drops.')}
    assert client.spin_until(lambda: diags and 'drops.unsupported_encoding' in drops(
        diags[-1], 'left'), 5)
    assert 'drops.unsupported_encoding' not in drops(diags[-1], 'front')
    assert node.alive()


def test_slow_camera_beside_a_fast_one_is_always_answered(tmp_path):
    """max_batch 1 (one frame per forward): a camera at 30 Hz never starves one at 2 Hz."""
    weights = make_semantic_weights(tmp_path / 'sem.pt', num_classes=NUM_CLASSES)
    node, client = serve(tmp_path, weights, ['-p', 'max_batch:=1'])
    try:
        boxes = {c: client.collect(Image, f'/segmentation/{c}/semantic/labels') for c in CAMS}
        fast = client.node.create_publisher(Image, '/front/image', 10)
        slow = client.node.create_publisher(Image, '/right/image', 10)
        assert client.spin_until(lambda: fast.get_subscription_count() and
                                 slow.get_subscription_count(), 20)
        big = synthetic_image(480, 640, 1)  # ~40 ms a frame: the fast camera saturates it
        small = synthetic_image(72, 96, 2)
        slow_stamps, t0, i = [], time.perf_counter(), 0
        while time.perf_counter() - t0 < 4.0:
            i += 1
            fast.publish(image_msg(big, 'rgb8', 10**9 + i * 10**6))
            if i % 15 == 0:  # 2 Hz
                stamp = 5 * 10**9 + i * 10**6
                slow.publish(image_msg(small, 'rgb8', stamp))
                slow_stamps.append(stamp)
            client.spin_until(lambda: False, 1 / 30)
        assert client.spin_until(lambda: all(s in boxes['right'] for s in slow_stamps), 10), (
            len(slow_stamps), len(boxes['right']))
        assert len(boxes['front']) > len(slow_stamps)  # the fast one was served too
    finally:
        client.close()
        assert node.stop() == 0, node.log()
