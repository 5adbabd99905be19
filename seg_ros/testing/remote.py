"""Drive a segment_node process from outside, over DDS (demo, evaluation, benchmark, tests).

:class:`NodeProcess` starts ``segment_node`` as a separate process (what ``ros2 run``
executes) in a chosen ROS domain; :class:`Client` is an rclpy node in its own Context that
publishes camera frames and collects the node's answers keyed by stamp.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from seg_ros.core.spatial.imaging import buffer_to_frame
from seg_ros.ros.messages import array_to_image, stamp_ns

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def large_data_transport() -> str:
    """Use Fast DDS's LARGE_DATA builtin transports in this process and the nodes it starts.

    With the default transports, a frame over the 512 KB shared-memory segment travels as
    UDP fragments that the default socket buffer drops; reliable delivery then waits for a
    retransmission (~3 s heartbeat here). Both ends must agree on the transports: a
    LARGE_DATA process and a DEFAULT one did not exchange 640x480 frames here. Call before
    creating a :class:`Client`; an explicit ``FASTDDS_BUILTIN_TRANSPORTS`` is respected.
    Returns the value in force.
    """
    return os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


#: libc's prctl, looked up here: between fork and exec (a child of a threaded process) only
#: the already resolved function is called, no dynamic-loader lookup that could meet a lock
#: another thread held at the fork
_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (Linux's
    PR_SET_PDEATHSIG). A tool or test killed on a timeout (the demo, SIGKILL) then leaves
    no node behind, still listening in its ROS domain for the next run that takes it.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class NodeProcess:
    """``segment_node --ros-args ARGS`` (or another executable of the package, or any
    ``command``) as a child process logging to ``log_path``.
    """

    def __init__(self, args: list[str], domain_id: int, log_path: Path,
                 env: dict[str, str] | None = None,
                 executable: str = 'segment_node',
                 command: list[str] | None = None) -> None:
        full_env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED='1',
                        RCUTILS_LOGGING_BUFFERED_STREAM='0')
        full_env.update(env or {})
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'w')
        self.proc = subprocess.Popen([*(command or [executable]), '--ros-args', *args],
                                     env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        """Process id of the node."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the node logged so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 120.0, marker: str = 'listening on') -> None:
        """Wait until the node logs ``marker`` (default: it listens, models warmed up).

        Raises:
            RuntimeError: the node exited; TimeoutError: not ready in time.
        """
        end = time.time() + timeout
        while time.time() < end:
            if marker in self.log():
                return
            if not self.alive():
                raise RuntimeError(f'segment_node exited:\n{self.log()}')
            time.sleep(0.2)
        raise TimeoutError(f'segment_node not ready after {timeout}s:\n{self.log()}')

    def stop(self) -> int:
        """SIGINT (as Ctrl-C), then SIGKILL after 10 s; returns the exit code."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class Client:
    """An rclpy node in its own Context that talks to a segment_node."""

    def __init__(self, domain_id: int, name: str = 'seg_ros_client') -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate: Callable[[], Any], timeout: float,
                   step: Callable[[], None] | None = None) -> bool:
        """Spin until ``predicate()`` is true or ``timeout`` passes; ``step`` runs between
        spins (e.g. to publish).
        """
        end = time.time() + timeout
        while time.time() < end:
            if predicate():
                return True
            if step is not None:
                step()
            self.executor.spin_once(timeout_sec=0.02)
        return bool(predicate())

    def collect(self, msg_type: type, topic: str, qos: QoSProfile | int = 10
                ) -> dict[int, tuple[Any, float]]:
        """Subscribe and keep every message as ``stamp_ns -> (msg, perf_counter at receipt)``."""
        box: dict[int, tuple[Any, float]] = {}

        def put(msg: Any) -> None:
            box[stamp_ns(msg.header)] = (msg, time.perf_counter())
        self.node.create_subscription(msg_type, topic, put, qos)
        return box

    def exchange(self, pub, msg: Image, boxes: list[dict], timeout: float = 60.0,
                 resend: float = 2.0, before: Callable[[], None] | None = None
                 ) -> float | None:
        """Publish ``msg`` until every box holds an answer with its stamp.

        Re-sends every ``resend`` seconds (the node may still be matching QoS); ``before``
        runs before every (re)send (e.g. to publish the frame's depth and camera_info again:
        a best-effort reader that had not matched yet lost the first ones). Returns the
        latency from the last publish to the **last** box's answer (the frame is done when
        its last output is in), or None on timeout.
        """
        key = stamp_ns(msg.header)
        last = [0.0]

        def step() -> None:
            if time.perf_counter() - last[0] > resend:
                if before is not None:
                    before()
                last[0] = time.perf_counter()
                pub.publish(msg)
        if not self.spin_until(lambda: all(key in b for b in boxes), timeout, step):
            return None
        return max(b[key][1] for b in boxes) - last[0]

    def close(self) -> None:
        """Destroy the node and shut the context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def own_domain(base: int = 50, span: int = 50) -> int:
    """The ROS domain a tool runs its own node in: ``SEG_ROS_DOMAIN_ID`` when set (the test
    suite gives each test its worker's own), else ``base + pid % span``, away from a robot's
    usual domain 0.
    """
    given = os.environ.get('SEG_ROS_DOMAIN_ID', '').strip()
    return int(given) if given.isdigit() else base + os.getpid() % span


@contextlib.contextmanager
def served(node_args: Sequence[Sequence[str]], domain_id: int, log_paths: Sequence[Path],
           client_name: str = 'seg_ros_client', ready_timeout: float = 600.0,
           env: dict[str, str] | None = None, executable: str = 'segment_node',
           ) -> Iterator[tuple[list[NodeProcess], Client]]:
    """Start one ``segment_node`` per argument list, wait until each is ready, and yield them
    with a :class:`Client` in the same domain; on the way out the client is closed and every
    node stopped (SIGINT). The pattern of the demo, the evaluation and the benchmarks.

    Raises:
        RuntimeError: a node exited while starting; TimeoutError: not ready in time (with
            its log).
    """
    nodes: list[NodeProcess] = []
    client = None
    try:
        for args, log in zip(node_args, log_paths, strict=True):
            nodes.append(NodeProcess(list(args), domain_id, log, env=env,
                                     executable=executable))
        for node in nodes:
            node.wait_ready(ready_timeout)
        client = Client(domain_id, client_name)
        yield nodes, client
    finally:
        if client is not None:
            client.close()
        for node in nodes:
            node.stop()


def frame_msg(rgb: np.ndarray, stamp: int, frame_id: str = 'camera',
              encoding: str = 'rgb8') -> Image:
    """An Image of an (H, W, C) array with the given stamp (ns)."""
    msg = array_to_image(rgb, encoding, Image().header)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp), 10**9)
    msg.header.frame_id = frame_id
    return msg


def camera_info_msg(k, p, width: int, height: int, stamp: int, frame_id: str = 'camera'):
    """A sensor_msgs/CameraInfo with the given ``k`` (9) and ``p`` (12) and stamp (ns)."""
    from sensor_msgs.msg import CameraInfo
    msg = CameraInfo()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp), 10**9)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.k = [float(v) for v in k]
    msg.p = [float(v) for v in p]
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    return msg


def decode(msg: Image) -> np.ndarray:
    """A received Image as a contiguous (H, W, C) array."""
    return np.ascontiguousarray(buffer_to_frame(msg.encoding, msg.height, msg.width, msg.step,
                                                msg.is_bigendian, msg.data).array)
