"""A node that receives nothing says so: no publisher, a matched publisher that sends no
frame, in both start orders; WARN in /diagnostics and a log line, OK again once frames flow."""
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import Image

from helpers import (
    NodeProcess,
    RosClient,
    fresh_domain_id,
    image_msg,
    make_semantic_weights,
    synthetic_image,
)

pytestmark = pytest.mark.ros


def node_args(weights):
    return ['-p', 'device:=cpu', '-p', f'semantic.weights:={weights}',
            '-p', 'semantic.input_size:=0', '-p', 'input_timeout:=1.0', '-p', 'warmup:=false',
            '-r', 'image:=/cam/image']


def last_status(diags):
    return diags[-1].status[0] if diags else None


def wait_status(client, diags, predicate, timeout=30.0):
    return client.spin_until(lambda: last_status(diags) is not None
                             and predicate(last_status(diags)), timeout)


@pytest.mark.parametrize('publisher_first', [False, True])
def test_silent_inputs_are_reported(tmp_path, publisher_first):
    weights = make_semantic_weights(tmp_path / 'w.pt')
    domain = fresh_domain_id()
    client = RosClient(domain)
    diags: list = []
    client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    pub = client.node.create_publisher(Image, '/cam/image', 10) if publisher_first else None
    node = NodeProcess(node_args(weights), domain, Path(tmp_path) / 'node.log')
    try:
        node.wait_ready()
        if not publisher_first:
            assert wait_status(client, diags, lambda s: s.level == DiagnosticStatus.WARN
                               and 'no publisher on /cam/image' in s.message), \
                (last_status(diags), node.log())
            assert 'no publisher on /cam/image' in node.log()
            pub = client.node.create_publisher(Image, '/cam/image', 10)
        # matched, but nothing sent: the other silence
        assert wait_status(client, diags, lambda s: s.level == DiagnosticStatus.WARN
                           and 'publisher matched on /cam/image, no frame' in s.message), \
            (last_status(diags), node.log())
        assert 'FASTDDS_BUILTIN_TRANSPORTS' in node.log()
        labels = client.collect(Image, '/segmentation/semantic/labels')
        stamp = [0]

        def send():
            stamp[0] += 1
            pub.publish(image_msg(synthetic_image(48, 64), 'rgb8', stamp[0] * 10**8))
            time.sleep(0.05)
        assert client.spin_until(lambda: len(labels) >= 3 and last_status(diags).level ==
                                 DiagnosticStatus.OK, 30, send), \
            (last_status(diags), node.log())
    finally:
        client.close()
        assert node.stop() == 0, node.log()
