"""segment_lifecycle_node: the managed (rclpy.lifecycle) variant of segment_node.

configure loads the models and warms them up (FAILURE with the reason when they cannot be
loaded); activate creates the publishers, the subscription and the worker; deactivate
destroys them again; cleanup releases the models (and cached GPU memory).
"""
from __future__ import annotations

import sys
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from seg_ros.ros.engine import Engine, StartupError, declare
from seg_ros.ros.segment_node import run


class SegmentLifecycleNode(LifecycleNode):
    """Managed segmentation node (starts unconfigured)."""

    def __init__(self, node_name: str = 'segmentation', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.engine = Engine(self)
        declare(self)
        self.get_logger().info('unconfigured; waiting for the configure transition')

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and warm up the models."""
        try:
            self.engine.load()
        except StartupError as exc:
            self.get_logger().error(f'configure failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start publishers, subscription and the inference thread."""
        self.engine.start()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop them."""
        self.engine.stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the models (and cached GPU memory)."""
        self.engine.release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop everything from any state."""
        self.engine.stop()
        self.engine.release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the worker, then destroy the node."""
        self.engine.stop()
        super().destroy_node()


def main() -> int:
    """Entry point of ``ros2 run seg_ros segment_lifecycle_node``."""
    return run(SegmentLifecycleNode)


if __name__ == '__main__':
    sys.exit(main())
