"""segment_node: camera images in, semantic labels / instance masks / detections out.

The plain node loads its models when constructed and serves until shut down; the managed
variant is :mod:`seg_ros.ros.segment_lifecycle_node`. Both delegate to
:class:`seg_ros.ros.engine.Engine`.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from seg_ros.ros.engine import Engine, StartupError, declare


class SegmentNode(Node):
    """Semantic and instance segmentation of one camera stream (unmanaged node)."""

    def __init__(self, node_name: str = 'segmentation', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.engine = Engine(self)
        declare(self)
        self.engine.load()
        self.engine.start()

    def destroy_node(self) -> None:
        """Stop the inference thread, then destroy the node."""
        engine = getattr(self, 'engine', None)
        if engine is not None:
            engine.stop()
        super().destroy_node()


#: on SIGINT / SIGTERM, how long a forward pass in progress may still take before the
#: process leaves without it (a CPU Mask R-CNN frame takes 10-20 s; launch escalates to
#: SIGTERM and SIGKILL after 5 s)
EXIT_GRACE_S = 1.0

#: after a stop request, the whole teardown (worker grace, executor, node, rclpy) gets this
#: long before the process leaves without it: a teardown that hangs (seen once in ~40
#: lifecycle runs here: SIGINT answered by nothing, the test's SIGKILL after 10 s) must not
#: break the promise of an exit with code 0 within 3 s
EXIT_DEADLINE_S = 2.5


def _leave_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _watch_signals(stop: threading.Event, building: list[bool]) -> None:
    """A second way out that does not need the main thread: the C-level signal handler
    writes each signal's number to a wakeup fd, which a daemon thread reads. On the first
    SIGINT / SIGTERM it sets ``stop`` and, if the process is still there
    ``EXIT_DEADLINE_S`` + 1 s later, writes every thread's stack to stderr and leaves with
    code 0. Twice in CI (a launch test's node after an ONNX export for a new frame size) the
    node kept serving after SIGINT and SIGTERM until launch's SIGKILL, its teardown and its
    GIL-free watchdog never reached: the main thread, where Python runs signal handlers,
    never ran this one. Call from the main thread after the handlers are installed.
    """
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: no second way out
        os.close(r)
        os.close(w)
        return
    wanted = {int(signal.SIGINT), int(signal.SIGTERM)}

    def watch() -> None:
        while not wanted & set(os.read(r, 64)):
            pass
        stop.set()
        time.sleep(EXIT_DEADLINE_S + 1.0)
        if not building[0]:  # a start cut short leaves quietly
            print('[segment_node] shutdown did not finish in time; leaving. Threads:',
                  file=sys.stderr, flush=True)
            faulthandler.dump_traceback(all_threads=True)
        _leave_now()
    threading.Thread(target=watch, daemon=True, name='seg_ros_signals').start()


def run(node_factory) -> int:
    """rclpy.init, build the node, serve; one clear line and exit code 1 when it cannot
    start; exit code 0 after SIGINT / SIGTERM, however many arrive, within about
    :data:`EXIT_GRACE_S` even in the middle of a forward pass.

    The executor spins in a background thread, inference runs in the engine's worker thread
    and the main thread waits for a stop. SIGINT and SIGTERM only set a flag (rclpy's own
    handlers are not installed): a terminal's Ctrl-C under ``ros2 launch`` reaches the node
    twice (from the terminal and from launch), and a second signal during shutdown must not
    turn a clean exit into a KeyboardInterrupt. A signal while the node is still being built
    (model loading) ends the start quietly. On the way out the worker is told to stop, the
    executor stops spinning, and only then are the node's handles destroyed; a worker still
    inside a forward pass after the grace is left behind (it publishes nothing) and the
    process exits without waiting for it.
    """
    stop = threading.Event()
    building = [True]

    def on_signal(*_args) -> None:
        stop.set()
        if building[0]:
            building[0] = False
            raise KeyboardInterrupt
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    _watch_signals(stop, building)
    rclpy.init(args=sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = spinner = None
    finished = True
    try:
        node = node_factory()
        building[0] = False
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor,), daemon=True,
                                   name='seg_ros_executor')
        spinner.start()
        while not stop.is_set() and rclpy.ok() and spinner.is_alive():
            stop.wait(0.2)
    except StartupError as exc:
        print(f'[segment_node] cannot start: {exc}', file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        building[0] = False
        if stop.is_set():  # a watchdog for the teardown below (daemon: no wait at exit)
            watchdog = threading.Timer(EXIT_DEADLINE_S, _leave_now)
            watchdog.daemon = True
            watchdog.start()
            # and one that needs no GIL: a teardown stuck in C code that holds it (a DDS
            # participant's destruction) starves the timer above; this one writes every
            # thread's stack to stderr and leaves with code 1 instead of waiting for SIGKILL
            faulthandler.dump_traceback_later(EXIT_DEADLINE_S + 2.0, exit=True)
        if node is not None:
            finished = node.engine.halt(EXIT_GRACE_S)
        if executor is not None:  # stop spinning before the node's handles go away
            executor.shutdown(timeout_sec=1.0)
            spinner.join(timeout=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        # After a stop request the process is on its way out: later SIGINT / SIGTERM (launch
        # forwards Ctrl-C again) are ignored, since interpreter finalisation resets Python-level
        # handlers to the default action and a signal then would kill the exit with -2.
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else handler)
    if not finished:  # a forward pass that cannot be interrupted: leave without it
        _leave_now()
    return 0


def _spin(executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def main() -> int:
    """Entry point of ``ros2 run seg_ros segment_node``."""
    return run(SegmentNode)


if __name__ == '__main__':
    sys.exit(main())
