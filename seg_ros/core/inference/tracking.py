"""Instance tracking: detections of frame t + live tracks -> persistent ids. No rclpy.

Association is ours, on boxes: the IoU between every detection and every live track of
the same class, solved as an assignment by scipy's ``linear_sum_assignment`` (Hungarian /
LAPJV, maintained in SciPy); a pair below ``iou_threshold`` is not a match. Tracks age on
the images' stamps, never on wall time, so frames dropped as superseded do not age them
beyond what their stamps say. Why not a packaged tracker (e.g. supervision's ByteTrack): it
ages tracks in frames at an assumed frame rate, numbers ids without bound and does not
skip ids still alive after a wrap; the id contract below needs all three.

Camera motion: when the caller passes a small grey copy of each frame, the tracker
estimates the frame-to-frame translation by phase correlation (numpy FFT, as BoT-SORT's
global motion compensation does with other estimators) and moves every track's box by it
before matching, so a wrist camera or a panning vehicle camera does not break every track.
A weak correlation peak (no reliable shift) means no compensation.

Id contract: ids are integers in 1..65535 (they fit the uint16 mask image); a new track
takes the next id after the last one given that no live track holds, wrapping past 65535
to 1; ids within one frame are distinct.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.optimize import linear_sum_assignment

MAX_ID = 65535


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) ``x1, y1, x2, y2`` boxes -> (N, M) float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


_WINDOWS: dict[tuple[int, int], np.ndarray] = {}


def spectrum(img: np.ndarray) -> np.ndarray:
    """The windowed, mean-free 2D real FFT of a small (h, w) grey image (float32)."""
    img = np.asarray(img, np.float32)
    win = _WINDOWS.get(img.shape)
    if win is None:
        win = _WINDOWS[img.shape] = np.outer(np.hanning(img.shape[0]),
                                             np.hanning(img.shape[1])).astype(np.float32)
    return scipy.fft.rfft2((img - img.mean()) * win)


def shift_from_spectra(prev: np.ndarray, cur: np.ndarray, shape: tuple[int, int],
                       min_peak: float = 0.08) -> tuple[float, float] | None:
    """Translation ``(dy, dx)`` between two images given their :func:`spectrum`, by phase
    correlation; None when the normalised correlation peak is below ``min_peak``.
    """
    if prev.shape != cur.shape or min(shape) < 8:
        return None
    cross = cur * np.conj(prev)
    cross /= np.abs(cross) + 1e-12
    corr = scipy.fft.irfft2(cross, s=shape)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    if corr[iy, ix] < min_peak:
        return None
    h, w = shape
    dy = iy - h if iy > h // 2 else iy
    dx = ix - w if ix > w // 2 else ix
    return float(dy), float(dx)


def estimate_shift(prev: np.ndarray, cur: np.ndarray, min_peak: float = 0.08
                   ) -> tuple[float, float] | None:
    """Translation ``(dy, dx)`` with ``cur(y, x) ~ prev(y - dy, x - dx)``, by phase correlation.

    Args:
        prev, cur: (h, w) float grey images of the same size (small: ~160 px wide is
            plenty; cost grows with h*w*log(h*w)).
        min_peak: least height of the normalised correlation peak (1.0 = identical up to
            the shift) for the estimate to count.

    Returns:
        The shift in pixels of these images, or None when there is no reliable peak.
    """
    if prev.shape != cur.shape:
        return None
    return shift_from_spectra(spectrum(prev), spectrum(cur), prev.shape, min_peak)


@dataclass
class TrackUpdate:
    """What :meth:`Tracker.update` did for one frame.

    Attributes:
        ids: (N,) int64 track id of each detection, in the detections' order.
        reset: the stamp went backwards, so every track was forgotten first.
    """

    ids: np.ndarray
    reset: bool = False


class Tracker:
    """Keeps instance ids across frames.

    Args:
        iou_threshold: least box IoU for a detection to continue a track, in (0, 1].
        timeout_s: a track not matched for longer than this (image stamps) is forgotten.

    Raises:
        ValueError: a parameter out of range.
    """

    def __init__(self, iou_threshold: float = 0.3, timeout_s: float = 1.0) -> None:
        self.iou_threshold = float(iou_threshold)
        self.timeout_s = float(timeout_s)
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f'iou_threshold must be in (0, 1], got {iou_threshold}')
        if self.timeout_s <= 0.0:
            raise ValueError(f'timeout_s must be > 0, got {timeout_s}')
        self.reset()

    def reset(self) -> None:
        """Forget every track (ids continue from where they were)."""
        self._ids = np.zeros(0, np.int64)
        self._boxes = np.zeros((0, 4), np.float64)
        self._classes = np.zeros(0, np.int64)
        self._last_seen = np.zeros(0, np.int64)
        self._last_stamp: int | None = None
        self._prev_spec: tuple[np.ndarray, tuple[int, int]] | None = None
        if not hasattr(self, '_next_id'):
            self._next_id = 1

    def __len__(self) -> int:
        """Number of live tracks."""
        return int(self._ids.shape[0])

    @property
    def live_ids(self) -> set[int]:
        """Ids of the live tracks."""
        return set(self._ids.tolist())

    def _take_ids(self, n: int) -> np.ndarray:
        """``n`` fresh ids: the next ones after the last given, skipping live ones."""
        live = self.live_ids
        if len(live) + n > MAX_ID:
            raise ValueError(f'more than {MAX_ID} live tracks')
        out = []
        nxt = self._next_id
        while len(out) < n:
            if nxt not in live:
                out.append(nxt)
            nxt = nxt % MAX_ID + 1
        self._next_id = nxt
        return np.array(out, np.int64)

    def update(self, boxes: np.ndarray, class_ids: np.ndarray, stamp_ns: int,
               small: np.ndarray | None = None, scale: float = 1.0) -> TrackUpdate:
        """Associate one frame's detections with the live tracks.

        Args:
            boxes: (N, 4) ``x1, y1, x2, y2`` pixels.
            class_ids: (N,) model class indices (a track never changes class).
            stamp_ns: the image's stamp in nanoseconds.
            small: optional (h, w) grey copy of the frame for camera-motion compensation.
            scale: frame pixels per pixel of ``small``.

        Returns:
            :class:`TrackUpdate` with one distinct id per detection.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        class_ids = np.asarray(class_ids, np.int64).reshape(-1)
        stamp_ns = int(stamp_ns)
        was_reset = self._last_stamp is not None and stamp_ns < self._last_stamp
        if was_reset:
            self.reset()
        self._last_stamp = stamp_ns
        # Forget tracks unseen for longer than the timeout (on the images' clock).
        alive = (stamp_ns - self._last_seen) <= int(self.timeout_s * 1e9)
        if not alive.all():
            self._ids, self._boxes = self._ids[alive], self._boxes[alive]
            self._classes, self._last_seen = self._classes[alive], self._last_seen[alive]
        shift = None
        if small is not None:
            spec = (spectrum(small), small.shape)
            if self._prev_spec is not None and self._prev_spec[1] == spec[1]:
                shift = shift_from_spectra(self._prev_spec[0], spec[0], spec[1])
            self._prev_spec = spec
        self.last_shift = (0.0, 0.0) if shift is None else (shift[0] * scale, shift[1] * scale)
        n = boxes.shape[0]
        ids = np.zeros(n, np.int64)
        matched_det = np.zeros(n, bool)
        if len(self) and shift is not None:
            # Unmatched tracks move with the image too, so the next frame's shift applies.
            dy, dx = self.last_shift
            self._boxes = self._boxes + np.array([dx, dy, dx, dy])
        if n and len(self):
            iou = box_iou(boxes, self._boxes)
            iou[class_ids[:, None] != self._classes[None, :]] = 0.0
            rows, cols = linear_sum_assignment(iou, maximize=True)
            ok = iou[rows, cols] >= self.iou_threshold
            rows, cols = rows[ok], cols[ok]
            ids[rows] = self._ids[cols]
            matched_det[rows] = True
            self._boxes[cols] = boxes[rows]
            self._last_seen[cols] = stamp_ns
        fresh = np.flatnonzero(~matched_det)
        if fresh.size:
            ids[fresh] = self._take_ids(fresh.size)
            self._ids = np.concatenate([self._ids, ids[fresh]])
            self._boxes = np.concatenate([self._boxes, boxes[fresh]])
            self._classes = np.concatenate([self._classes, class_ids[fresh]])
            self._last_seen = np.concatenate([self._last_seen,
                                              np.full(fresh.size, stamp_ns, np.int64)])
        return TrackUpdate(ids=ids, reset=was_reset)
