"""segment_node: camera images in, semantic labels / instance masks / detections out.

The plain node loads its models when constructed and serves until shut down; the managed
variant is :mod:`seg_ros.ros.segment_lifecycle_node`. Both delegate to
:class:`seg_ros.ros.engine.Engine`.
"""
from __future__ import annotations

import sys
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

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


def run(node_factory) -> int:
    """rclpy.init, build the node, spin; one clear line and exit code 1 when it cannot
    start; clean shutdown on Ctrl-C / SIGTERM.
    """
    rclpy.init(args=sys.argv)
    node = None
    try:
        node = node_factory()
        rclpy.spin(node)
    except StartupError as exc:
        print(f'[segment_node] cannot start: {exc}', file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main() -> int:
    """Entry point of ``ros2 run seg_ros segment_node``."""
    return run(SegmentNode)


if __name__ == '__main__':
    sys.exit(main())
