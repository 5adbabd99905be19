"""launch_testing: `multi_camera.launch.py` starts one segment_node for four cameras whose
image topics are remapped; each camera is answered on its own namespaced output with its
own header, the shared label_info is latched once, and every process exits cleanly.
"""
import os
import time
import unittest
from pathlib import Path

import launch_testing
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import LabelInfo

from helpers import (
    LaunchClientCase,
    assert_clean_exit,
    fresh_domain_id,
    get_parameters,
    image_msg,
    included_launch,
    make_semantic_weights,
    synthetic_image,
)

DOMAIN = fresh_domain_id()
NS, NODE_NAME = '/car', 'segmentation'
CAMS = ('front', 'left', 'right', 'rear')
TOPICS = {c: f'/rig/{c}/image_raw' for c in CAMS}


@pytest.mark.launch_test
def generate_test_description():
    os.environ['ROS_DOMAIN_ID'] = str(DOMAIN)
    tmp = Path(os.environ.get('TMPDIR', '/tmp')) / f'seg_ros_multi_{os.getpid()}'
    tmp.mkdir(parents=True, exist_ok=True)
    weights = make_semantic_weights(tmp / 'sem.pt', num_classes=6)
    params = tmp / 'params.yaml'
    params.write_text(f"""\
/**:
  ros__parameters:
    device: cpu
    warmup: false
    semantic:
      weights: {weights}
      input_size: 0
""")
    return included_launch('multi_camera.launch.py', {
        'cameras': ','.join(CAMS), 'images': ','.join(TOPICS[c] for c in CAMS),
        'max_batch': '2', 'params_file': str(params), 'namespace': NS})


class TestMultiCamera(LaunchClientCase, unittest.TestCase):
    DOMAIN = DOMAIN

    def test_every_camera_answered_on_its_own_output(self, proc_output):
        proc_output.assertWaitFor('listening on', timeout=120, stream='stderr')
        client = self.client
        boxes = {c: client.collect(Image, f'{NS}/{NODE_NAME}/{c}/semantic/labels')
                 for c in CAMS}
        pubs = {c: client.node.create_publisher(Image, TOPICS[c], 1) for c in CAMS}
        for c, pub in pubs.items():
            assert client.spin_until(lambda pub=pub: pub.get_subscription_count() > 0, 30), \
                f'the remapped input {TOPICS[c]} has no subscriber'
        msgs = {c: image_msg(synthetic_image(72, 96, i), 'rgb8', (i + 1) * 10**9,
                             frame_id=f'{c}_optical') for i, c in enumerate(CAMS)}
        last = [0.0]

        def step():
            if time.perf_counter() - last[0] > 1.0:
                last[0] = time.perf_counter()
                for c in CAMS:
                    pubs[c].publish(msgs[c])
        assert client.spin_until(lambda: all((i + 1) * 10**9 in boxes[c]
                                             for i, c in enumerate(CAMS)), 60, step)
        for i, c in enumerate(CAMS):
            out = boxes[c][(i + 1) * 10**9][0]
            assert out.header.frame_id == f'{c}_optical' and out.width == 96
        latched = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        client.node.create_subscription(LabelInfo, f'{NS}/{NODE_NAME}/semantic/label_info',
                                        latched.append, qos)
        assert client.spin_until(lambda: latched, 10)
        values = get_parameters(client, f'{NS}/{NODE_NAME}', ['cameras', 'max_batch'])
        assert values == [list(CAMS), 2]


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info, proc_output):
        assert_clean_exit(proc_info, proc_output)
