"""segment_lifecycle_node: configure / activate / deactivate / cleanup over DDS."""
import time

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from sensor_msgs.msg import Image

from helpers import (
    image_msg,
    make_semantic_weights,
    start_node,
    synthetic_image,
)

pytestmark = pytest.mark.ros


def call(client, srv_type, name, request, timeout=60.0):
    cli = client.node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=20.0), name
    fut = cli.call_async(request)
    if not client.spin_until(fut.done, 5.0):
        # Right after discovery a response can be lost (reply writer not matched yet);
        # a query is idempotent, so ask again.
        cli.remove_pending_request(fut)
        fut = cli.call_async(request)
    assert client.spin_until(fut.done, timeout), f'{name} timed out'
    client.node.destroy_client(cli)
    return fut.result()


TARGET = {Transition.TRANSITION_CONFIGURE: 'inactive', Transition.TRANSITION_ACTIVATE: 'active',
          Transition.TRANSITION_DEACTIVATE: 'inactive',
          Transition.TRANSITION_CLEANUP: 'unconfigured'}


def transition(client, tid, timeout=300.0):
    """A transition is never re-sent (it is not idempotent: a second configure reaches a
    node already configuring or inactive and is refused). When its answer is slow (a model's
    load and export on a slow machine) or lost (right after discovery), the node's state
    says whether it happened."""
    cli = client.node.create_client(ChangeState, '/segmentation/change_state')
    assert cli.wait_for_service(timeout_sec=20.0)
    fut = cli.call_async(ChangeState.Request(transition=Transition(id=tid)))
    try:
        if client.spin_until(fut.done, 10.0):
            return fut.result().success
        end = time.time() + timeout
        while time.time() < end:
            if fut.done():
                return fut.result().success
            if state(client) == TARGET[tid]:
                return True
            client.spin_until(fut.done, 2.0)
        return False
    finally:
        client.node.destroy_client(cli)


def answer(client, tid, tries=3, timeout=60.0):
    """The node's own answer (``success``) to a transition expected to fail, or None when no
    answer came: a lost reply is not a refusal. Asked again only while the node is still in
    the state it was asked from (a failed configure leaves it unconfigured: the same
    question again), never after it moved."""
    start = state(client)
    cli = client.node.create_client(ChangeState, '/segmentation/change_state')
    assert cli.wait_for_service(timeout_sec=20.0)
    try:
        for _ in range(tries):
            fut = cli.call_async(ChangeState.Request(transition=Transition(id=tid)))
            if client.spin_until(fut.done, timeout):
                return fut.result().success
            cli.remove_pending_request(fut)
            if state(client) != start:
                return None
        return None
    finally:
        client.node.destroy_client(cli)


def state(client):
    res = call(client, GetState, '/segmentation/get_state', GetState.Request(), timeout=300)
    return res.current_state.label


def start(tmp_path, weights):
    return start_node(tmp_path, ['-p', 'device:=cpu', '-p', f'semantic.weights:={weights}',
                                 '-p', 'semantic.input_size:=0', '-r', 'image:=/cam/image'],
                      executable='segment_lifecycle_node',
                      ready_marker='waiting for the configure transition')


def test_transitions(tmp_path):
    weights = make_semantic_weights(tmp_path / 'w.pt')
    node, client = start(tmp_path, weights)
    try:
        assert state(client) == 'unconfigured'
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        labels = {}
        client.node.create_subscription(Image, '/segmentation/semantic/labels',
                                        lambda m: labels.setdefault(m.header.stamp.sec, m), 10)
        assert transition(client, Transition.TRANSITION_CONFIGURE)
        assert state(client) == 'inactive'
        assert pub.get_subscription_count() == 0  # nothing subscribed before activation
        assert transition(client, Transition.TRANSITION_ACTIVATE)
        assert state(client) == 'active'
        msg = image_msg(synthetic_image(48, 64), 'rgb8', 5 * 10**9)
        assert client.spin_until(lambda: 5 in labels, 30, lambda: pub.publish(msg))
        assert transition(client, Transition.TRANSITION_DEACTIVATE)
        assert client.spin_until(lambda: pub.get_subscription_count() == 0, 10)
        labels.clear()
        msg = image_msg(synthetic_image(48, 64), 'rgb8', 6 * 10**9)
        for _ in range(5):
            pub.publish(msg)
            client.spin_until(lambda: False, 0.2)
        assert not labels, 'an inactive node must not answer'
        assert transition(client, Transition.TRANSITION_CLEANUP)
        assert state(client) == 'unconfigured'
        assert transition(client, Transition.TRANSITION_CONFIGURE)  # loads again
        assert transition(client, Transition.TRANSITION_ACTIVATE)
        msg = image_msg(synthetic_image(48, 64), 'rgb8', 7 * 10**9)
        assert client.spin_until(lambda: 7 in labels, 30, lambda: pub.publish(msg))
    finally:
        client.close()
        assert node.stop() == 0, node.log()


def test_configure_fails_when_the_model_cannot_load(tmp_path):
    node, client = start(tmp_path, tmp_path / 'missing.pt')
    try:
        assert answer(client, Transition.TRANSITION_CONFIGURE) is False  # refused, not lost
        assert state(client) == 'unconfigured'
        assert 'weights file not found' in node.log()
        assert node.alive()
    finally:
        client.close()
        node.stop()
