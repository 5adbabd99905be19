"""Stopping and restarting: one worker after many lifecycle restarts during slow batches,
Ctrl-C in the middle of a long forward pass, Ctrl-C while the node is still importing."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
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
        batches = {'started': 0, 'ended': 0}
        delay = [batch_s]  # the slow model's extra time per batch (0 for the last checks)

        class Slow:
            def __getattr__(self, name):
                return getattr(real, name)

            def run_many(self, *a, **kw):
                batches['started'] += 1
                try:
                    time.sleep(delay[0])  # a slow model (the thing under test is the engine)
                    return real.run_many(*a, **kw)
                finally:
                    batches['ended'] += 1
        node.engine.processor.pipeline = Slow()
        client.node.create_subscription(
            Image, '/segmentation/semantic/labels',
            lambda m: answers.__setitem__(m.header.stamp.sec,
                                          answers.get(m.header.stamp.sec, 0) + 1), 100)
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        rgb = synthetic_image(48, 64)
        change(Transition.TRANSITION_ACTIVATE)
        last = [0.0]

        def publish_every(msg, period=2.0):  # re-sent only when a copy was lost (a second
            # copy taken would start a second batch, or be a second answer)
            def step():
                if time.perf_counter() - last[0] > period:
                    last[0] = time.perf_counter()
                    pub.publish(msg)
            return step
        for cycle in range(cycles):
            msg = image_msg(rgb, 'rgb8', (cycle + 1) * 10**9)
            # the activated node subscribes again: publish once it is matched
            assert client.spin_until(lambda: pub.get_subscription_count() > 0, 20)
            # until the node's worker has taken the frame: its batch is then running
            assert client.spin_until(lambda c=cycle: batches['started'] > c, 30,
                                     publish_every(msg)), (cycle, batches)
            assert batches['ended'] < batches['started'], 'the batch must still be running'
            change(Transition.TRANSITION_DEACTIVATE)
            change(Transition.TRANSITION_ACTIVATE)
        # the left-behind batches end (slower than the grace), then their workers exit
        assert client.spin_until(lambda: batches['ended'] == batches['started'], 3 * batch_s
                                 + 30), batches
        assert batches['started'] == cycles, batches  # no stopped batch ran again

        def workers():
            return [t for t in threading.enumerate()
                    if t.name == 'seg_ros_inference' and t.is_alive()]
        client.spin_until(lambda: len(workers()) <= 1, 10)
        assert len(workers()) == 1, workers()
        # the node still answers, each frame once (1000 answered after 999: a duplicate of
        # 999 would be in by then); a re-sent copy of a cycle's frame may be answered by
        # the new worker, but never twice (a stopped batch publishes nothing). The model is
        # fast again here, so that a re-send (after 2 s) means a lost copy, not a slow one.
        delay[0] = 0.0
        for stamp in (999, 1000):
            assert client.spin_until(lambda s=stamp: s in answers, 30,
                                     publish_every(image_msg(rgb, 'rgb8', stamp * 10**9)))
        assert answers[999] == 1 and all(n == 1 for n in answers.values()), answers
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


def _last_values(diags) -> dict:
    if not diags or not diags[-1].status:
        return {}
    return {kv.key: kv.value for kv in diags[-1].status[0].values}


def received_any(diags) -> bool:
    """The node's last diagnostics count a received frame."""
    return int(_last_values(diags).get('received', '0')) >= 1


def under_way(diags) -> bool:
    """The node's last diagnostics: a frame received, none processed yet."""
    return received_any(diags) and _last_values(diags).get('processed') == '0'


def importing(pid: int) -> bool:
    """The process has begun importing torch (its libraries are mapped)."""
    try:
        return 'libtorch' in Path(f'/proc/{pid}/maps').read_text()
    except OSError:
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
                        '-p', 'warmup:=false', '-p', 'diagnostics_period:=0.2',
                        '-r', 'image:=/cam/image'],
                       domain, Path(tmp_path) / 'node.log')
    client = RosClient(domain)
    diags = []
    client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    try:
        node.wait_ready()
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        assert client.spin_until(lambda: pub.get_subscription_count() > 0, 20)
        frame = image_msg(synthetic_image(480, 640), 'rgb8', 10**9)
        last = [0.0]

        def send():  # until the node has one (a copy sent before it matched us is lost)
            if time.perf_counter() - last[0] > 1.0 and not received_any(diags):
                last[0] = time.perf_counter()
                pub.publish(frame)
        # a frame was received and nothing processed yet: its forward pass is under way
        # (several seconds at 2000 px; the worker takes a frame as soon as it arrives)
        assert client.spin_until(lambda: under_way(diags), 30, send), diags[-1:]
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
        # torch is being imported, and the node is not up yet (it logs nothing before)
        assert _wait_for(lambda: importing(node.pid) or not node.alive(), 30), node.log()
        assert node.alive() and 'listening on' not in node.log(), node.log()
        os.killpg(node.proc.pid, signal.SIGINT)
        assert _wait_for(lambda: not node.alive(), 10.0), node.log()
        assert node.proc.returncode == 0, node.log()
        assert 'Traceback' not in node.log() and 'KeyboardInterrupt' not in node.log(), \
            node.log()
    finally:
        node.stop()


def test_a_node_never_outlives_the_tool_that_started_it(tmp_path):
    """A tool killed on a timeout (SIGKILL: no clean-up of its own) takes the process it
    started with testing.remote.NodeProcess along (PR_SET_PDEATHSIG): no node is left
    listening in its domain for the next run. The child here stands in for a node."""
    code = (
        'import sys, time\n'
        'from pathlib import Path\n'
        'from seg_ros.testing.remote import NodeProcess\n'
        f'p = NodeProcess([], 0, Path({str(tmp_path / "child.log")!r}),\n'
        '                command=[sys.executable, "-c", "import time; time.sleep(120)"])\n'
        'print(p.pid, flush=True)\n'
        'time.sleep(120)\n')
    tool = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)

    def running(pid: int) -> bool:  # a zombie (reaped by nobody in a container) is gone
        try:
            return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
        except OSError:
            return False
    try:
        child = int(tool.stdout.readline())
        assert running(child)
        tool.kill()
        tool.wait(10)
        end = time.time() + 10
        while running(child) and time.time() < end:
            time.sleep(0.1)
        if running(child):
            os.kill(child, signal.SIGKILL)
            raise AssertionError('the child outlived the tool that started it')
    finally:
        if tool.poll() is None:
            tool.kill()


def test_a_stop_signal_ends_the_process_even_when_the_main_thread_never_runs_python():
    """segment_node's second way out: the main thread (where Python runs signal handlers)
    sits in C code with SIGINT blocked; the C-level handler's wakeup byte still reaches the
    watcher thread, which leaves with code 0 after the exit deadline, the threads' stacks on
    stderr. Without the watcher this process would sleep its 60 s out."""
    code = (
        'import ctypes, signal, threading\n'
        'from seg_ros.ros import segment_node as sn\n'
        'stop = threading.Event()\n'
        'signal.signal(signal.SIGINT, lambda *a: stop.set())\n'
        'sn._watch_signals(stop, [False])\n'
        'signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n'
        'print("ready", flush=True)\n'
        'ctypes.CDLL(None).sleep(60)\n')
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert 'shutdown did not finish in time' in err, err
    assert took < 10, took
