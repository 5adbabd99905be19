"""segment_node: camera images in, semantic labels / instance masks / detections out.

The plain node loads its models when constructed and serves until shut down; the managed
variant is :mod:`seg_ros.ros.segment_lifecycle_node`. Both delegate to
:class:`seg_ros.ros.engine.Engine`.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from seg_ros.ros.engine import Engine, StartupError, declare


class SegmentNode(Node):
    """Semantic and instance segmentation of one camera stream (unmanaged node).

    Args:
        worker_thread: run inference in a thread of its own (default); ``main()`` passes
            False and runs :meth:`Engine.work` in the main thread instead, spinning the
            executor in a background thread.
    """

    def __init__(self, node_name: str = 'segmentation', worker_thread: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.engine = Engine(self)
        declare(self)
        self.engine.load()
        self.engine.start(worker_thread)

    def destroy_node(self) -> None:
        """Stop the inference thread, then destroy the node."""
        engine = getattr(self, 'engine', None)
        if engine is not None:
            engine.stop()
        super().destroy_node()


def run(node_factory, inference_in_main_thread: bool = False) -> int:
    """rclpy.init, build the node, serve; one clear line and exit code 1 when it cannot
    start; exit code 0 after SIGINT / SIGTERM, however many arrive.

    The executor spins in a background thread. The main thread runs the node's inference
    loop (``node.engine.work``) with ``inference_in_main_thread``, else waits. SIGINT and
    SIGTERM only set a flag (rclpy's own handlers are not installed): a terminal's Ctrl-C
    under ``ros2 launch`` reaches the node twice (from the terminal and from launch), and a
    second signal during shutdown must not turn a clean exit into a KeyboardInterrupt.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(args=sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = spinner = None
    try:
        node = node_factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor,), daemon=True,
                                   name='seg_ros_executor')
        spinner.start()

        def keep_going() -> bool:
            return not stop.is_set() and rclpy.ok() and spinner.is_alive()
        if inference_in_main_thread:
            node.engine.work(keep_going=keep_going)
        else:
            while keep_going():
                stop.wait(0.2)
    except StartupError as exc:
        print(f'[segment_node] cannot start: {exc}', file=sys.stderr, flush=True)
        return 1
    except ExternalShutdownException:
        pass
    finally:
        if node is not None:
            node.engine.stop()
        if executor is not None:  # stop spinning before the node's handles go away
            executor.shutdown(timeout_sec=5.0)
            spinner.join(timeout=5.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        # After a stop request the process is on its way out: later SIGINT / SIGTERM (launch
        # forwards Ctrl-C again) are ignored, since interpreter finalisation resets Python-level
        # handlers to the default action and a signal then would kill the exit with -2.
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else handler)
    return 0


def _spin(executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def main() -> int:
    """Entry point of ``ros2 run seg_ros segment_node``."""
    return run(lambda: SegmentNode(worker_thread=False), inference_in_main_thread=True)


if __name__ == '__main__':
    sys.exit(main())
