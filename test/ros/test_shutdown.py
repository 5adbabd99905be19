"""Stopping and restarting: one worker after many lifecycle restarts during slow batches,
Ctrl-C in the middle of a long forward pass, Ctrl-C while the node is still importing."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
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
BATCH_S = 0.6


def test_restarts_during_slow_batches_leave_one_worker_and_answer_each_frame_once(tmp_path):
    """Twenty deactivate/activate cycles, each while a batch (slower than the stop grace)
    is running: exactly one inference thread afterwards, no frame answered twice."""
    restart_cycles(tmp_path, cycles=20, batch_s=BATCH_S, grace_s=0.05)


def test_restart_during_a_batch_longer_than_the_default_grace(tmp_path):
    """One deactivate/activate while a batch runs longer than the default 10 s stop grace
    (4 cameras of Mask R-CNN on this CPU): the batch left behind ends without publishing
    and without resuming as a second worker."""
    restart_cycles(tmp_path, cycles=1, batch_s=11.5, grace_s=None)


def restart_cycles(tmp_path, cycles: int, batch_s: float, grace_s: float | None):
    from seg_ros.ros.engine import Engine
    from seg_ros.ros.segment_lifecycle_node import SegmentLifecycleNode
    weights = make_semantic_weights(tmp_path / 'w.pt')
    domain = fresh_domain_id()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = SegmentLifecycleNode(context=ctx, cli_args=['--ros-args', '-r', 'image:=/cam/image'],
                                parameter_overrides=[
        Parameter('device', value='cpu'), Parameter('semantic.weights', value=str(weights)),
        Parameter('semantic.input_size', value=0), Parameter('warmup', value=False)])
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = RosClient(domain)
    old_grace = Engine.STOP_GRACE_S
    if grace_s is not None:
        Engine.STOP_GRACE_S = grace_s  # below a batch: every stop leaves a batch running
    answers: dict[int, int] = {}
    try:
        cli = client.node.create_client(ChangeState, '/segmentation/change_state')
        assert cli.wait_for_service(timeout_sec=20)

        def change(tid):
            fut = cli.call_async(ChangeState.Request(transition=Transition(id=tid)))
            assert client.spin_until(fut.done, 60), tid
            assert fut.result().success, tid
        change(Transition.TRANSITION_CONFIGURE)
        real = node.engine.processor.pipeline

        class Slow:
            def __getattr__(self, name):
                return getattr(real, name)

            def run_many(self, *a, **kw):
                time.sleep(batch_s)
                return real.run_many(*a, **kw)
        node.engine.processor.pipeline = Slow()
        client.node.create_subscription(
            Image, '/segmentation/semantic/labels',
            lambda m: answers.__setitem__(m.header.stamp.sec,
                                          answers.get(m.header.stamp.sec, 0) + 1), 100)
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        rgb = synthetic_image(48, 64)
        change(Transition.TRANSITION_ACTIVATE)
        sent = 0
        for _cycle in range(cycles):
            sent += 1
            msg = image_msg(rgb, 'rgb8', sent * 10**9)
            # until the node has the frame (its batch is then running)
            client.spin_until(lambda: node.engine.cameras[0].slot is None and any(
                t.name == 'seg_ros_inference' for t in threading.enumerate()), 0.3,
                lambda m=msg: pub.publish(m))
            client.spin_until(lambda: False, 0.1)
            change(Transition.TRANSITION_DEACTIVATE)
            change(Transition.TRANSITION_ACTIVATE)
        client.spin_until(lambda: False, 2 * batch_s)  # the left-behind batches end
        workers = [t for t in threading.enumerate()
                   if t.name == 'seg_ros_inference' and t.is_alive()]
        assert len(workers) == 1, workers
        assert all(n == 1 for n in answers.values()), answers
        # and the node still answers
        msg = image_msg(rgb, 'rgb8', 999 * 10**9)
        assert client.spin_until(lambda: 999 in answers, 30, lambda: pub.publish(msg))
    finally:
        Engine.STOP_GRACE_S = old_grace
        client.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_in_the_middle_of_a_long_forward_pass_exits_promptly(tmp_path):
    """Mask R-CNN at 2000 px on this CPU takes several seconds a frame: SIGINT during it
    ends the process within 3 s, exit code 0, no traceback."""
    domain = fresh_domain_id()
    node = NodeProcess(['-p', 'device:=cpu', '-p', 'semantic.enabled:=false',
                        '-p', 'instance.enabled:=true',
                        '-p', 'instance.backend:=torch', '-p', 'instance.weights:=none',
                        '-p', 'instance.model:=maskrcnn_resnet50_fpn',
                        '-p', 'instance.min_size:=2000', '-p', 'instance.max_size:=3000',
                        '-p', 'warmup:=false', '-r', 'image:=/cam/image'],
                       domain, Path(tmp_path) / 'node.log')
    client = RosClient(domain)
    try:
        node.wait_ready()
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        assert client.spin_until(lambda: pub.get_subscription_count() > 0, 20)
        pub.publish(image_msg(synthetic_image(480, 640), 'rgb8', 10**9))
        client.spin_until(lambda: False, 2.0)  # the forward pass is under way
        assert node.alive()
        t0 = time.time()
        os.killpg(node.proc.pid, signal.SIGINT)
        assert _wait_for(lambda: not node.alive(), 6.0), node.log()
        took = time.time() - t0
        assert node.proc.returncode == 0, node.log()
        assert took < 3.0, (took, node.log())
        assert 'Traceback' not in node.log(), node.log()
    finally:
        client.close()
        node.stop()


def test_ctrl_c_while_starting_is_quiet(tmp_path):
    """SIGINT while the node is still importing torch and rclpy: exit code 0, no
    KeyboardInterrupt traceback."""
    node = NodeProcess(['-p', 'device:=cpu'], fresh_domain_id(), Path(tmp_path) / 'node.log')
    try:
        time.sleep(1.0)
        assert node.alive()
        os.killpg(node.proc.pid, signal.SIGINT)
        assert _wait_for(lambda: not node.alive(), 10.0), node.log()
        assert node.proc.returncode == 0, node.log()
        assert 'Traceback' not in node.log() and 'KeyboardInterrupt' not in node.log(), \
            node.log()
    finally:
        node.stop()
