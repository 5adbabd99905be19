"""Rates, drop counters and latency percentiles for diagnostics. No rclpy, no torch."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np


class FrameStats:
    """Thread-safe counters of one node: frames in, processed, dropped (by reason), latency.

    Rates are over the last ``window`` seconds; latency percentiles over the last
    ``samples`` processed frames.
    """

    def __init__(self, window: float = 5.0, samples: int = 200) -> None:
        self.window = window
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.drops: Counter[str] = Counter()
        self._in_times: deque[float] = deque()
        self._out_times: deque[float] = deque()
        self._processing: deque[float] = deque(maxlen=samples)
        self._age: deque[float] = deque(maxlen=samples)
        self._samples = samples
        self._stages: dict[str, deque[float]] = {}

    def on_received(self, now: float | None = None) -> None:
        """A frame arrived (valid or not)."""
        with self._lock:
            self.received += 1
            self._push(self._in_times, now)

    def on_dropped(self, reason: str) -> int:
        """A frame was dropped; returns the count for that reason."""
        with self._lock:
            self.drops[reason] += 1
            return self.drops[reason]

    def on_processed(self, processing_s: float, stamp_to_publish_s: float | None,
                     now: float | None = None) -> None:
        """A frame was processed and published. A negative or unknown stamp age (clock
        reset, bag loop, sim time jumping back) is not recorded.
        """
        with self._lock:
            self.processed += 1
            self._push(self._out_times, now)
            self._processing.append(processing_s)
            if stamp_to_publish_s is not None and stamp_to_publish_s >= 0:
                self._age.append(stamp_to_publish_s)

    def on_stage(self, timings: dict[str, float]) -> None:
        """Durations (s) of named stages of one frame (convert, wait, inference, publish)."""
        with self._lock:
            for name, seconds in timings.items():
                self._stages.setdefault(name, deque(maxlen=self._samples)).append(seconds)

    def _push(self, times: deque[float], now: float | None) -> None:
        now = time.monotonic() if now is None else now
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()

    def snapshot(self, now: float | None = None) -> dict[str, float | int | dict[str, int]]:
        """Current figures: rates (Hz), totals, drops by reason, latency p50/p95 (s)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for times in (self._in_times, self._out_times):
                while times and times[0] < now - self.window:
                    times.popleft()
            proc = np.array(self._processing) if self._processing else None
            age = np.array(self._age) if self._age else None
            return {
                'input_rate_hz': len(self._in_times) / self.window,
                'processed_rate_hz': len(self._out_times) / self.window,
                'received': self.received,
                'processed': self.processed,
                'drops': dict(self.drops),
                'processing_p50_s': float(np.percentile(proc, 50)) if proc is not None else 0.0,
                'processing_p95_s': float(np.percentile(proc, 95)) if proc is not None else 0.0,
                'stamp_to_publish_p50_s': float(np.percentile(age, 50)) if age is not None
                else 0.0,
                'stamp_to_publish_p95_s': float(np.percentile(age, 95)) if age is not None
                else 0.0,
                **{f'stage.{k}_p50_s': float(np.median(v)) for k, v in self._stages.items()},
            }
