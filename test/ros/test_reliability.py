"""Hostile input and faults: segment_node drops what it must, says why, keeps serving."""
import io
import threading
import time

import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray

from helpers import (
    RosClient,
    fresh_domain_id,
    image_msg,
    make_semantic_weights,
    serve_node,
    set_parameters,
    synthetic_image,
)

pytestmark = pytest.mark.ros
H, W = 48, 64


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return make_semantic_weights(tmp_path_factory.mktemp('rel') / 'sem.pt')


def serve(tmp_path_factory, weights, *extra):
    return serve_node(tmp_path_factory.mktemp('node'), [
        '-p', 'device:=cpu', '-p', f'semantic.weights:={weights}',
        '-p', 'semantic.input_size:=0', '-r', 'image:=/cam/image', *extra])


@pytest.fixture(scope='module')
def raw(tmp_path_factory, weights):
    # diagnostics every 50 ms: the fuzz tests wait for each example to be counted
    yield from serve(tmp_path_factory, weights, '-p', 'diagnostics_period:=0.05')


@pytest.fixture(scope='module')
def compressed(tmp_path_factory, weights):
    yield from serve(tmp_path_factory, weights, '-p', 'input_transport:=compressed',
                     '-p', 'diagnostics_period:=0.05')


def received(client) -> int | None:
    """The node's ``received`` counter in its latest /diagnostics (None before any)."""
    diags = getattr(client, '_rel_diags', None)
    if diags is None:
        diags = client._rel_diags = []
        client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    for d in reversed(diags):
        for status in d.status:
            for kv in status.values:
                if kv.key == 'received':
                    return int(kv.value)
    return None


def Answers(client):
    return client.collect(Image, '/segmentation/semantic/labels', 50)


def answered(client, pub, msg, answers, timeout=20.0):
    return client.exchange(pub, msg, [answers], timeout, resend=0.5) is not None


def now_stamp(client):
    return client.node.get_clock().now().nanoseconds


def compressed_msg(rgb, fmt, stamp):
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, fmt.upper())
    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
    msg.format = f'rgb8; {fmt} compressed bgr8'
    msg.data = buf.getvalue()
    return msg


#: fuzz bookkeeping per node: the publisher, the node's received count, examples sent
FUZZ: dict[str, dict] = {}


def fuzz_start(name, client, pub, good):
    """Before the first example: the publisher is matched (a good frame answered) and the
    node's received count is known (the same in ten diagnostics in a row: every copy of
    the good frame is in)."""
    received(client)  # subscribe to /diagnostics
    assert answered(client, pub, good, Answers(client))
    last, same = None, 0
    while same < 10:
        seq = len(client._rel_diags)
        assert client.spin_until(lambda n=seq: len(client._rel_diags) > n, 5)
        now = received(client)
        same = same + 1 if now == last else 0
        last = now
    FUZZ[name] = {'pub': pub, 'count': last, 'sent': 0}


def fuzz_send(name, client, node, msg):
    """Publish one example and wait until the node counted it (its subscription keeps the
    newest frame only: one example in flight at a time, so none is overwritten); then it
    must still be alive."""
    state = FUZZ[name]
    state['pub'].publish(msg)
    state['sent'] += 1
    want = state['count'] + 1
    counted = client.spin_until(lambda: (received(client) or 0) >= want, 10)
    got, state['count'] = received(client), received(client) or state['count']
    assert counted and got == want, (want, got, node.log()[-2000:])
    assert node.alive(), node.log()


@pytest.fixture(scope='module')
def raw_fuzz(raw):
    """The raw node, ready for fuzzing (matched, count known): once, outside hypothesis,
    so that a node that does not answer fails here once instead of in every example."""
    node, client = raw
    pub = client.node.create_publisher(Image, '/cam/image', 10)
    fuzz_start('raw', client, pub, image_msg(synthetic_image(H, W), 'rgb8', 554 * 10**9))
    return raw


@pytest.fixture(scope='module')
def compressed_fuzz(compressed):
    """As raw_fuzz, for the compressed node."""
    node, client = compressed
    pub = client.node.create_publisher(CompressedImage, '/cam/image/compressed', 10)
    fuzz_start('compressed', client, pub,
               compressed_msg(synthetic_image(H, W), 'png', 556 * 10**9))
    return compressed


def test_compressed_jpeg_png_and_broken_payloads(compressed):
    node, client = compressed
    answers = Answers(client)
    pub = client.node.create_publisher(CompressedImage, '/cam/image/compressed', 10)
    rgb = synthetic_image(H, W)
    assert answered(client, pub, compressed_msg(rgb, 'png', 10**9), answers)
    assert answered(client, pub, compressed_msg(rgb, 'jpeg', 2 * 10**9), answers)
    good = compressed_msg(rgb, 'jpeg', 3 * 10**9).data
    bad = {'empty_data': b'', 'decode_error': bytes(good[:len(good) // 2]),
           'unsupported_format': good}
    for i, (reason, data) in enumerate(bad.items()):
        msg = compressed_msg(rgb, 'jpeg', (10 + i) * 10**9)
        msg.data = data
        if reason == 'unsupported_format':
            msg.format = 'rgb8; tiff compressed'
        pub.publish(msg)
        # one at a time (the subscription keeps the newest frame only): until it is dropped
        assert client.spin_until(lambda r=reason: f'({r}:' in node.log(), 20), node.log()
    garbage = compressed_msg(rgb, 'png', 20 * 10**9)
    garbage.data = b'\x89PNG\r\n\x1a\n' + b'garbage' * 50
    pub.publish(garbage)
    assert answered(client, pub, compressed_msg(rgb, 'png', 30 * 10**9), answers)
    assert not set(answers) & {10 * 10**9, 11 * 10**9, 12 * 10**9, 20 * 10**9}
    log = node.log()
    for reason in ('empty_data', 'decode_error', 'unsupported_format'):
        assert f'({reason}:' in log, log
    assert node.alive()


def test_max_age_and_backwards_time(raw):
    node, client = raw
    answers = Answers(client)
    pub = client.node.create_publisher(Image, '/cam/image', 10)
    rgb = synthetic_image(H, W)
    assert answered(client, pub, image_msg(rgb, 'rgb8', now_stamp(client)), answers)
    assert set_parameters(client, '/segmentation', {'max_age': 5.0})[0].successful
    old = image_msg(rgb, 'rgb8', now_stamp(client) - 60 * 10**9)
    pub.publish(old)
    assert client.spin_until(lambda: '(too_old:' in node.log(), 20), node.log()
    fresh = image_msg(rgb, 'rgb8', now_stamp(client))
    assert answered(client, pub, fresh, answers)
    assert (old.header.stamp.sec * 10**9 + old.header.stamp.nanosec) not in answers
    assert '(too_old:' in node.log()
    assert set_parameters(client, '/segmentation', {'max_age': 0.0})[0].successful
    # Stamps that jump backwards (sim reset, bag loop) are served like any other.
    for stamp in (5 * 10**9, 3 * 10**9, 10**9):
        assert answered(client, pub, image_msg(rgb, 'rgb8', stamp), answers), stamp


def test_diagnostics_and_latency_topic(raw):
    node, client = raw
    diags, lat = [], []
    client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    client.node.create_subscription(Float64MultiArray, '/segmentation/latency', lat.append, 10)
    answers = Answers(client)
    pub = client.node.create_publisher(Image, '/cam/image', 10)
    # A good frame first: our publisher is matched once it is answered.
    assert answered(client, pub, image_msg(synthetic_image(H, W), 'rgb8', 77 * 10**9), answers)
    bad = image_msg(synthetic_image(H, W), 'rgb8', 1)
    bad.encoding = '32FC1'
    pub.publish(bad)
    assert client.spin_until(lambda: lat and diags and any(
        'drops.unsupported_encoding' in {kv.key for s in d.status for kv in s.values}
        for d in diags), 10.0)
    values = {kv.key: kv.value for kv in diags[-1].status[0].values}
    for key in ('input_rate_hz', 'processed_rate_hz', 'processing_p50_s', 'processing_p95_s',
                'stamp_to_publish_p50_s', 'device', 'model', 'received', 'processed'):
        assert key in values, values
    assert values['device'] == 'cpu' and 'lraspp' in values['model']
    assert int(values['processed']) >= 1
    assert lat[-1].layout.dim[0].label == 'processing_s,stamp_to_publish_s'
    assert len(lat[-1].data) == 2 and 0 < lat[-1].data[0] < 30


ENCODINGS = ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', 'rgb16', 'yuv422', '',
             '32FC1', 'bayer_rggb8', 'x' * 300]


@st.composite
def hostile_images(draw):
    msg = Image()
    msg.encoding = draw(st.sampled_from(ENCODINGS))
    msg.height = draw(st.one_of(st.integers(0, 64), st.sampled_from([2**31 - 1, 2**32 - 1])))
    msg.width = draw(st.one_of(st.integers(0, 64), st.sampled_from([2**31 - 1, 65536])))
    msg.step = draw(st.one_of(st.integers(0, 256), st.just(2**32 - 1)))
    msg.is_bigendian = draw(st.integers(0, 1))
    size = draw(st.one_of(st.integers(0, 64 * 64 * 4),
                          st.just(min(msg.step * msg.height, 64 * 256))))
    msg.data = draw(st.binary(min_size=size, max_size=size))
    msg.header.frame_id = draw(st.text(max_size=20))
    return msg


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(msg=hostile_images())
def test_fuzz_random_images_never_crash_the_node(raw_fuzz, msg):
    node, client = raw_fuzz
    fuzz_send('raw', client, node, msg)


def test_still_answers_after_fuzzing(raw_fuzz):
    """Every example of the fuzz test reached the node (counted one by one there) and
    none killed it; a good frame is still answered afterwards."""
    node, client = raw_fuzz
    state = FUZZ['raw']
    assert state['sent'] == 60, state
    answers = Answers(client)
    assert answered(client, state['pub'], image_msg(synthetic_image(H, W), 'rgb8',
                                                    555 * 10**9), answers)
    assert node.alive()


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), fmt=st.sampled_from(['jpeg', 'png', 'rgb8; jpeg',
                                                            'bgr8; png compressed', 'bmp']),
       prefix=st.sampled_from([b'', b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n']))
def test_fuzz_compressed(compressed_fuzz, data, fmt, prefix):
    node, client = compressed_fuzz
    msg = CompressedImage()
    msg.format = fmt
    msg.data = prefix + data
    fuzz_send('compressed', client, node, msg)


def test_still_answers_after_compressed_fuzzing(compressed_fuzz):
    """As for raw images: every compressed example reached the node, a good frame is still
    answered afterwards."""
    node, client = compressed_fuzz
    state = FUZZ['compressed']
    assert state['sent'] == 30, state
    answers = client.collect(Image, '/segmentation/semantic/labels', 50)
    assert answered(client, state['pub'], compressed_msg(synthetic_image(H, W), 'png',
                                                         557 * 10**9), answers)
    assert node.alive()


def test_exception_in_processing_is_logged_and_the_node_continues(weights, tmp_path):
    """In-process node (real rclpy and DDS) whose pipeline fails once."""
    from seg_ros.ros.segment_node import SegmentNode
    domain = fresh_domain_id()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = SegmentNode(context=ctx, cli_args=['--ros-args', '-r', 'image:=/cam/image'],
                       parameter_overrides=[
        Parameter('device', value='cpu'), Parameter('semantic.weights', value=str(weights)),
        Parameter('semantic.input_size', value=0)])
    logs = []
    real = node.engine.processor.pipeline
    faults = [RuntimeError('post-processing exploded'),
              torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')]

    class Faulty:
        def __getattr__(self, name):
            return getattr(real, name)

        def run_many(self, *a, **kw):
            if faults:
                raise faults.pop(0)
            return real.run_many(*a, **kw)
    node.engine.processor.pipeline = Faulty()
    cam = node.engine.cameras[0]
    cam.drop = lambda reason, text, _d=cam.drop: (logs.append(text), _d(reason, text))
    executor = MultiThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    client = RosClient(domain)
    try:
        answers = Answers(client)
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        first = image_msg(synthetic_image(H, W), 'rgb8', 42 * 10**9 + 7)
        last = [0.0]

        def resend():  # until the node has matched our publisher and taken the frame
            if time.time() - last[0] > 0.5:
                pub.publish(first)
                last[0] = time.time()
        client.spin_until(lambda: len(logs) >= 2, 20, resend)
        assert len(logs) == 2 and '42.000000007' in logs[0] and 'exploded' in logs[0]
        # with its traceback: where it happened, not only what
        assert 'Traceback' in logs[0] and 'in run_many' in logs[0], logs[0]
        assert 'out of memory' in logs[1] and 'cache released' in logs[1]
        assert node.engine.stats.drops['processing_error'] == 1
        assert node.engine.stats.drops['out_of_memory'] == 1
        assert answered(client, pub, image_msg(synthetic_image(H, W), 'rgb8', 43 * 10**9),
                        answers)
    finally:
        client.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
