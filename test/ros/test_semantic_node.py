"""segment_node as a separate process, over real DDS: semantic outputs and bad frames."""
import time

import numpy as np
import pytest
import torch
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import LabelInfo

from seg_ros.core.colors import voc_palette
from seg_ros.core.models import SEMANTIC_MODELS

from helpers import (
    NodeProcess,
    RosClient,
    fresh_domain_id,
    image_msg,
    image_to_array,
    make_semantic_weights,
    synthetic_image,
)

pytestmark = pytest.mark.ros
H, W, NUM_CLASSES = 72, 96, 6


def torchvision_labels(weights, rgb):
    model = SEMANTIC_MODELS['lraspp_mobilenet_v3_large'].builder(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model((x - mean) / std)['out'].argmax(1)[0].numpy()


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sem')
    weights = make_semantic_weights(tmp / 'sem.pt', num_classes=NUM_CLASSES)
    domain = fresh_domain_id()
    node = NodeProcess(['-p', 'device:=cpu', '-p', 'semantic.model:=lraspp_mobilenet_v3_large',
                        '-p', f'semantic.weights:={weights}', '-p',
                        f'semantic.num_classes:={NUM_CLASSES}', '-p', 'semantic.input_size:=0',
                        '-r', 'image:=/cam/image'], domain, tmp / 'node.log')
    node.wait_ready()
    client = RosClient(domain)
    yield weights, node, client
    client.close()
    assert node.stop() == 0, node.log()


class Inbox:
    def __init__(self, client, topic, msg_type=Image, qos=10):
        self.msgs = []
        self.sub = client.node.create_subscription(msg_type, topic, self.msgs.append, qos)

    def by_stamp(self, stamp_ns):
        sec, ns = divmod(stamp_ns, 10**9)
        return [m for m in self.msgs if (m.header.stamp.sec, m.header.stamp.nanosec) == (sec, ns)]


def send_until_answered(client, pub, msg, inbox, timeout=30.0):
    stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    last = [0.0]

    def step():
        if time.time() - last[0] > 0.5:
            pub.publish(msg)
            last[0] = time.time()
    assert client.spin_until(lambda: inbox.by_stamp(stamp), timeout, step), \
        f'no answer to frame {stamp}'
    return inbox.by_stamp(stamp)[0]


def test_labels_match_torchvision_and_copy_the_header(setup):
    weights, node, client = setup
    labels = Inbox(client, '/segmentation/semantic/labels')
    color = Inbox(client, '/segmentation/semantic/color')
    pub = client.node.create_publisher(Image, '/cam/image', 10)
    rgb = synthetic_image(H, W, seed=5)
    ref = torchvision_labels(weights, rgb)
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
        assert client.spin_until(lambda s=stamp: color.by_stamp(s), 10.0)
        col = color.by_stamp(stamp)[0]
        assert col.encoding == 'rgb8' and (col.height, col.width) == (H, W)
        np.testing.assert_array_equal(image_to_array(col), voc_palette(NUM_CLASSES)[got])


def test_label_info_reaches_a_late_subscriber(setup):
    _, _, client = setup
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    info = Inbox(client, '/segmentation/semantic/label_info', LabelInfo, qos)
    assert client.spin_until(lambda: info.msgs, 15.0)
    cmap = info.msgs[0].class_map
    assert [(c.class_id, c.class_name) for c in cmap] == [(i, str(i)) for i in
                                                          range(NUM_CLASSES)]


def test_bad_frames_are_dropped_and_the_node_survives(setup):
    _, node, client = setup
    labels = Inbox(client, '/segmentation/semantic/labels')
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
    for msg in bad:
        pub.publish(msg)
        client.spin_until(lambda: False, 0.3)
    good = image_msg(synthetic_image(H, W), 'rgb8', 99 * 10**9)
    out = send_until_answered(client, pub, good, labels)
    assert (out.height, out.width) == (H, W)
    assert not any(m.header.stamp.sec in (0,) and m.header.stamp.nanosec in range(1, 6)
                   for m in labels.msgs), 'a bad frame was answered'
    assert node.alive()
    log = node.log()
    for reason in ('unsupported_encoding', 'data_size', 'zero_size', 'bad_step', 'too_large'):
        assert reason in log, f'no warning for {reason}:\n{log}'


def test_best_effort_publisher_is_followed(setup):
    _, node, client = setup
    labels = Inbox(client, '/segmentation/semantic/labels')
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
