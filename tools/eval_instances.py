#!/usr/bin/env python3
"""eval_instances (seg_ros.training.eval_instances; also: ros2 run seg_ros eval_instances)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_ros.training.eval_instances import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
