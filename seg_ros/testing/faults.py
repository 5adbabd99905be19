"""Fault injection for ``segment_bag``'s tests: the Ray worker of chunk 1 dies.

    python -m seg_ros.testing.faults --die-once MARKER SEGMENT_BAG_ARGS...
    python -m seg_ros.testing.faults --die-always SEGMENT_BAG_ARGS...

Runs ``segment_bag`` with a :class:`~seg_ros.offline.worker.BagWorker` subclass whose
``process_chunk`` ends its process on chunk 1: once (it writes its pid to MARKER first, and
a restarted actor finds the marker and goes on), or every time. The class is made inside a
function, so Ray ships it by value with the marker to every actor; the runtime has no hook.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from seg_ros.offline import segment_bag
from seg_ros.offline.worker import BagWorker, Item, Result


def dying_worker(marker: str | None) -> type[BagWorker]:
    """A BagWorker whose process dies on chunk 1: once (``marker``), or always (None)."""

    class DyingBagWorker(BagWorker):
        def process_chunk(self, chunk_index: int, chunk: list[Item]) -> list[Result]:
            if chunk_index == 1 and (marker is None or not os.path.exists(marker)):
                if marker is not None:
                    Path(marker).write_text(str(os.getpid()))
                os._exit(1)
            return super().process_chunk(chunk_index, chunk)
    return DyingBagWorker


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ['--die-once'] and len(args) > 1:
        return segment_bag.main(args[2:], worker_class=dying_worker(args[1]))
    if args[:1] == ['--die-always']:
        return segment_bag.main(args[1:], worker_class=dying_worker(None))
    print('usage: python -m seg_ros.testing.faults --die-once MARKER | --die-always '
          'SEGMENT_BAG_ARGS...', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
