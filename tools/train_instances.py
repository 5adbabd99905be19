#!/usr/bin/env python3
"""train_instances (seg_ros.training.train_instances; also: ros2 run seg_ros train_instances)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_ros.training.train_instances import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
