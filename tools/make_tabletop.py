#!/usr/bin/env python3
"""Generated RGB-D tabletop scenes as a COCO dataset (seg_ros.training.make_tabletop)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_ros.training.make_tabletop import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
