"""One throttled warner for the live node and ``segment_bag``: a reason's warning at most
once per period, whoever emits it (a node's logger, or stderr offline). No rclpy.
"""
from __future__ import annotations

import time
from collections.abc import Callable

#: seconds between two warnings of one reason
WARN_PERIOD_S = 5.0


class ThrottledWarner:
    """``warner(key, text)`` emits ``text`` unless ``key`` was emitted within the period.

    Args:
        emit: called with the text of a warning that passes (e.g. ``logger.warning``).
        period_s: the least time between two warnings of one key.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, emit: Callable[[str], None], period_s: float = WARN_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, key: str, text: str) -> bool:
        """Emit ``text`` if ``key`` is due; returns whether it was emitted."""
        now = self._clock()
        if now - self._last.get(key, -1e18) < self.period_s:
            return False
        self._last[key] = now
        self.emit(text)
        return True
