"""How ``segment_bag`` runs the frames: in this process, or in chunks on Ray actors."""
from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from seg_ros.offline.worker import BagError, BagWorker, Item, Result

CHUNK = 8  # frames per Ray task
MAX_RESTARTS = 3  # per actor, and retries per chunk: a worker that keeps dying ends the run


def run_local(worker: BagWorker, items: Iterator[Item], progress) -> Iterator[tuple[Item, Result]]:
    for item in items:
        yield item, worker.process(item)
        progress(1)


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_ray(values: dict[str, Any], items: Iterator[Item], address: str | None, workers: int,
            progress, chunk: int = CHUNK, worker_class: type[BagWorker] = BagWorker
            ) -> Iterator[tuple[Item, Result]]:
    """Chunks of frames over Ray actors, at most two chunks per actor in flight (memory
    stays bounded), results in input order. Each actor holds a ``worker_class`` (a
    :class:`BagWorker`; :mod:`seg_ros.testing.faults` passes one that dies on a chunk).
    """
    import ray
    from ray.util import ActorPool

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)

    @ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
    class Worker:
        def __init__(self, values: dict[str, Any]) -> None:
            self.worker = worker_class(values, quiet=True)

        def process_chunk(self, chunk_index: int, chunk: list[Item]) -> list[Result]:
            return self.worker.process_chunk(chunk_index, chunk)

    try:
        pool = ActorPool([Worker.remote(values) for _ in range(workers)])
        in_flight: deque[list[Item]] = deque()

        def collect() -> Iterator[tuple[Item, Result]]:
            done = in_flight.popleft()
            results = pool.get_next()
            yield from zip(done, results, strict=True)
            progress(len(results))
        try:
            for index, part in enumerate(_chunks(items, chunk)):
                pool.submit(lambda a, ic: a.process_chunk.remote(*ic), (index, part))
                in_flight.append(part)
                if len(in_flight) >= 2 * workers:
                    yield from collect()
            while in_flight:
                yield from collect()
        except ray.exceptions.RayError as exc:  # e.g. a worker that died MAX_RESTARTS times
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BagError(f'segment_bag: Ray failed, output removed: {first}') from None
    finally:
        ray.shutdown()


class Progress:
    """frames, frames/s and ETA on a terminal (stderr); silent otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.tty:
            return
        dt = max(time.monotonic() - self.t0, 1e-9)
        fps = self.done / dt
        eta = (self.total - self.done) / fps if fps > 0 else float('inf')
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        sys.stderr.write(f'\r[{"#" * filled}{"." * (width - filled)}] {self.done}/{self.total}'
                         f' frames  {fps:.2f} frames/s  ETA {eta:.0f} s ')
        sys.stderr.flush()
        if self.done >= self.total:
            sys.stderr.write('\n')


