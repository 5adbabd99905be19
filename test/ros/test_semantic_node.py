"""segment_node as a separate process, over real DDS: semantic outputs and bad frames."""
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import LabelInfo

from seg_ros.core.spatial.colors import voc_palette
from seg_ros.ros.messages import stamp_ns

from helpers import (
    image_msg,
    image_to_array,
    make_semantic_weights,
    serve_node,
    synthetic_image,
    torchvision_semantic_labels,
)

pytestmark = pytest.mark.ros
H, W, NUM_CLASSES = 72, 96, 6


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sem')
    weights = make_semantic_weights(tmp / 'sem.pt', num_classes=NUM_CLASSES)
    args = ['-p', 'device:=cpu', '-p', 'semantic.model:=lraspp_mobilenet_v3_large',
            '-p', f'semantic.weights:={weights}', '-p', f'semantic.num_classes:={NUM_CLASSES}',
            '-p', 'semantic.input_size:=0', '-r', 'image:=/cam/image']
    for node, client in serve_node(tmp, args):
        yield weights, node, client


def send_until_answered(client, pub, msg, box, timeout=30.0):
    """Publish ``msg`` until ``box`` holds the answer; returns that message."""
    assert client.exchange(pub, msg, [box], timeout, resend=0.5) is not None, 'no answer'
    return box[stamp_ns(msg.header)][0]


def test_labels_match_torchvision_and_copy_the_header(setup):
    weights, node, client = setup
    labels = client.collect(Image, '/segmentation/semantic/labels')
    color = client.collect(Image, '/segmentation/semantic/color')
    pub = client.node.create_publisher(Image, '/cam/image', 10)
    rgb = synthetic_image(H, W, seed=5)
    ref = torchvision_semantic_labels(weights, rgb, NUM_CLASSES)
    assert np.bincount(ref.ravel()).max() < 0.8 * ref.size, 'reference must vary'
    for i, (enc, arr, step) in enumerate([
            ('rgb8', rgb, None),
            ('bgr8', np.ascontiguousarray(rgb[:, :, ::-1]), W * 3 + 10),
            ('rgba8', np.dstack([rgb, np.zeros((H, W), np.uint8)]), None),
            ('rgb16', rgb.astype(np.uint16) * 257, None)]):
        stamp = 1_700_000_000_000_000_000 + i * 1_000_000 + 123
        msg = image_msg(arr, enc, stamp, frame_id=f'camera_{enc}', step=step)
        out = send_until_answered(client, pub, msg, labels)
        assert out.header.frame_id == f'camera_{enc}'
        assert (out.encoding, out.height, out.width) == ('mono8', H, W)
        got = image_to_array(out)[:, :, 0]
        assert (got == ref).mean() >= 0.995, f'{enc}: {(got == ref).mean():.4f}'
        assert client.spin_until(lambda s=stamp: s in color, 10.0)
        col = color[stamp][0]
        assert col.encoding == 'rgb8' and (col.height, col.width) == (H, W)
        np.testing.assert_array_equal(image_to_array(col), voc_palette(NUM_CLASSES)[got])


def test_label_info_reaches_a_late_subscriber(setup):
    _, _, client = setup
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    info = client.collect(LabelInfo, '/segmentation/semantic/label_info', qos)
    assert client.spin_until(lambda: info, 15.0)
    cmap = next(iter(info.values()))[0].class_map
    assert [(c.class_id, c.class_name) for c in cmap] == [(i, str(i)) for i in
                                                          range(NUM_CLASSES)]


def test_bad_frames_are_dropped_and_the_node_survives(setup):
    _, node, client = setup
    labels = client.collect(Image, '/segmentation/semantic/labels')
    pub = client.node.create_publisher(Image, '/cam/image', 10)
    # A good frame first: our publisher is matched once it is answered.
    send_until_answered(client, pub, image_msg(synthetic_image(H, W), 'rgb8', 98 * 10**9),
                        labels)
    bad = []
    m = image_msg(synthetic_image(8, 8), 'rgb8', 1)
    m.encoding = 'yuv422'
    bad.append(m)
    m = image_msg(synthetic_image(8, 8), 'rgb8', 2)
    m.data = m.data[:-5]  # short data
    bad.append(m)
    m = image_msg(synthetic_image(8, 8), 'rgb8', 3)
    m.height = 0
    bad.append(m)
    m = image_msg(synthetic_image(8, 8), 'rgb8', 4)
    m.step = 5  # smaller than a row
    bad.append(m)
    m = image_msg(synthetic_image(8, 8), 'rgb8', 5)
    m.height = m.width = 60000  # absurd header, tiny data
    bad.append(m)
    reasons = ('unsupported_encoding', 'data_size', 'zero_size', 'bad_step', 'too_large')
    for msg, reason in zip(bad, reasons, strict=True):
        pub.publish(msg)
        # one at a time (the subscription keeps the newest frame only): until it is dropped
        assert client.spin_until(lambda r=reason: f'({r}:' in node.log(), 20), \
            f'no warning for {reason}:\n{node.log()}'
    good = image_msg(synthetic_image(H, W), 'rgb8', 99 * 10**9)
    out = send_until_answered(client, pub, good, labels)
    assert (out.height, out.width) == (H, W)
    assert not set(labels) & set(range(1, 6)), 'a bad frame was answered'
    assert node.alive()


def test_best_effort_publisher_is_followed(setup):
    _, node, client = setup
    labels = client.collect(Image, '/segmentation/semantic/labels')
    for pub in list(client.node.publishers):
        if pub.topic_name == '/cam/image':
            client.node.destroy_publisher(pub)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    pub = client.node.create_publisher(Image, '/cam/image', qos)
    out = send_until_answered(client, pub, image_msg(synthetic_image(H, W), 'rgb8', 7 * 10**9),
                              labels, timeout=30.0)
    assert out.height == H
    log = node.log()  # started best effort, followed the reliable publisher, then this one
    assert log.rindex('with reliability best_effort') > log.index('with reliability reliable')
