"""The real ROS 2 command line against seg_ros: `ros2 launch`, `ros2 run`, `ros2 param`,
`ros2 lifecycle`, and Ctrl-C on `ros2 launch` (SIGINT to the whole process group, twice, as
a terminal and launch both deliver it) ending in a clean exit.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from sensor_msgs.msg import Image

from seg_ros.testing.remote import Client, frame_msg

from helpers import fresh_domain_id, synthetic_image

pytestmark = [pytest.mark.ros,
              pytest.mark.skipif(shutil.which('ros2') is None,
                                 reason='ros2 CLI not installed (no ../shared/ros2_tools)')]


class Proc:
    """A command in its own session (process group), output to a file."""

    def __init__(self, cmd: list[str], domain: int, log_path) -> None:
        self.log_path = log_path
        self._log = open(log_path, 'w')
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1',
                   RCUTILS_LOGGING_BUFFERED_STREAM='0')
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_for(self, marker: str, timeout: float = 120.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if marker in self.text():
                return
            assert self.proc.poll() is None, f'exited early:\n{self.text()}'
            time.sleep(0.2)
        raise AssertionError(f'{marker!r} not seen in {timeout}s:\n{self.text()}')

    def interrupt_group(self, times: int = 1, timeout: float = 30.0) -> int:
        """SIGINT to the whole group, as a terminal's Ctrl-C; returns the exit code."""
        for _ in range(times):
            os.killpg(self.proc.pid, signal.SIGINT)
            time.sleep(0.1)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f'did not exit on SIGINT:\n{self.text()}') from None
        finally:
            self._log.close()


def _spin(args: tuple[str, ...], attempt: int) -> list[str]:
    """``args`` with a ``--spin-time`` that grows by 2 s per earlier attempt (at most 10 s):
    without the daemon the CLI knows only what DDS discovered during its own spin, which
    took longer than 3 s for a whole minute once on a loaded machine under Jazzy.
    """
    out = list(args)
    if '--spin-time' in out:
        i = out.index('--spin-time') + 1
        out[i] = str(min(10.0, float(out[i]) + 2.0 * attempt))
    return out


def ros2(domain: int, *args: str, timeout: float = 30.0, tries: int = 4,
         attempt: int = 0) -> str:
    """Run a ros2 verb without the daemon; retry while the graph is still being discovered,
    each time spinning longer for discovery (``_spin``; ``attempt`` = earlier tries).

    A call that hangs is retried too: `ros2 param` and `ros2 lifecycle` wait for the service's
    answer with no timeout (`spin_until_future_complete(node, future)`), so a request sent
    before DDS has matched the service's reply writer to the CLI's reader is lost and the
    command never returns (seen once on CI under Jazzy). A user would press Ctrl-C and retry.
    """
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    out = ''
    for i in range(tries):
        call = ['ros2', *_spin(args, attempt + i)]
        try:
            res = subprocess.run(call, env=env, capture_output=True, text=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = f'timed out after {timeout} s: {exc.stdout or ""}{exc.stderr or ""}'
            continue
        out = res.stdout + res.stderr
        if res.returncode == 0 and 'not found' not in out.lower():
            return out
        time.sleep(1.0)
    raise AssertionError(f'{" ".join(call)} failed:\n{out}')


def test_ros2_launch_serves_and_ctrl_c_exits_cleanly(tmp_path):
    domain = fresh_domain_id()
    launch = Proc(['ros2', 'launch', 'seg_ros', 'segment.launch.py', 'image:=/cam/image',
                   'device:=cpu'], domain, tmp_path / 'launch.log')
    client = None
    try:
        launch.wait_for('listening on /cam/image')
        client = Client(domain, 'cli_test_client')
        labels = client.collect(Image, '/segmentation/semantic/labels')
        pub = client.node.create_publisher(Image, '/cam/image', 1)
        msg = frame_msg(synthetic_image(60, 80, seed=1), 1_700_000_000_000_000_001)
        assert client.exchange(pub, msg, [labels], timeout=60, resend=1.0) is not None, \
            launch.text()
        assert labels[1_700_000_000_000_000_001][0].encoding == 'mono8'
        out = ros2(domain, 'param', 'describe', '/segmentation', 'semantic.model',
                   '--no-daemon', '--spin-time', '3')
        assert 'Type: string' in out and 'Read only: true' in out, out
        out = ros2(domain, 'param', 'get', '/segmentation', 'device', '--no-daemon',
                   '--spin-time', '3')
        assert 'cpu' in out, out
    finally:
        if client is not None:
            client.close()
        code = launch.interrupt_group(times=2)
    text = launch.text()
    assert code == 0, text
    assert 'process has finished cleanly' in text, text
    assert 'Traceback' not in text and 'KeyboardInterrupt' not in text, text


def test_ros2_run_and_param_reads(tmp_path):
    domain = fresh_domain_id()
    node = Proc(['ros2', 'run', 'seg_ros', 'segment_node', '--ros-args', '-p', 'device:=cpu',
                 '-p', 'warmup:=false'], domain, tmp_path / 'run.log')
    try:
        node.wait_for('listening on')
        out = ros2(domain, 'param', 'get', '/segmentation', 'instance.classes', '--no-daemon',
                   '--spin-time', '3')
        assert 'String values are: []' in out, out
        out = ros2(domain, 'param', 'dump', '/segmentation', '--no-daemon', '--spin-time', '3')
        assert 'class_names: []' in out and 'weights: camvid' in out, out
        # descriptors carry the ranges that set enforces
        out = ros2(domain, 'param', 'describe', '/segmentation', 'instance.score_threshold',
                   'max_batch', '--no-daemon', '--spin-time', '3')
        assert 'Min value: 0.0' in out and 'Max value: 1.0' in out, out
        assert 'Max value: 64' in out, out
    finally:
        code = node.interrupt_group()
    assert code == 0, node.text()


def lifecycle_set(domain: int, transition: str, state: str, tries: int = 10) -> None:
    """`ros2 lifecycle set`, which is not idempotent: a call that hung (its answer lost, see
    `ros2`) may still have reached the node, so the state is read back before re-sending.
    "Node not found" (the CLI has not discovered the node yet) sent nothing: retried as is,
    spinning longer each time. On failure the message shows what the CLI could discover.
    """
    out = ''
    for attempt in range(tries):
        try:
            out = ros2(domain, 'lifecycle', 'set', '/segmentation', transition, '--no-daemon',
                       '--spin-time', '3', tries=1, attempt=attempt)
        except AssertionError as exc:
            out = str(exc)
        if 'Transitioning successful' in out:
            return
        if 'not found' in out.lower():
            continue
        now = ros2(domain, 'lifecycle', 'get', '/segmentation', '--no-daemon',
                   '--spin-time', '3', attempt=attempt)
        if now.startswith(state):
            return
    graph = subprocess.run(['ros2', 'node', 'list', '-a', '--no-daemon', '--spin-time', '10'],
                           env=dict(os.environ, ROS_DOMAIN_ID=str(domain)),
                           capture_output=True, text=True, timeout=60)
    raise AssertionError(f'lifecycle {transition} did not reach {state}:\n{out}\n'
                         f'ros2 node list -a (10 s of discovery): {graph.stdout}{graph.stderr}')


def test_ros2_lifecycle_drives_the_managed_node(tmp_path):
    domain = fresh_domain_id()
    node = Proc(['ros2', 'run', 'seg_ros', 'segment_lifecycle_node', '--ros-args',
                 '-p', 'device:=cpu', '-p', 'warmup:=false'], domain, tmp_path / 'lc.log')
    try:
        node.wait_for('waiting for the configure transition')
        for transition, state in (('configure', 'inactive'), ('activate', 'active')):
            lifecycle_set(domain, transition, state)
        out = ros2(domain, 'lifecycle', 'get', '/segmentation', '--no-daemon',
                   '--spin-time', '3')
        assert out.startswith('active'), out
        node.wait_for('listening on')
    finally:
        code = node.interrupt_group()
    assert code == 0, node.text()
