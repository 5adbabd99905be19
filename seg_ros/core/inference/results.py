"""The small dataclasses the pure pipeline returns. No rclpy."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SemanticResult:
    """Per-pixel classes of one frame.

    Attributes:
        labels: (H, W) uint8 (<= 256 classes) or uint16 class indices, input resolution.
        color: (H, W, 3) uint8 RGB colour-coded labels, or None when not requested.
    """

    labels: np.ndarray
    color: np.ndarray | None = None


@dataclass
class InstanceResult:
    """Objects of one frame, ordered by descending score; instance k (1-based) is row k-1.

    Attributes:
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` in input-image pixels.
        scores: (N,) float32 in [0, 1], non-increasing.
        class_ids: (N,) int64 model class indices.
        id_map: (H, W) uint16; 0 = background, ``ids[k-1]`` = the pixels of instance k;
            where masks overlap the higher-scored instance keeps the pixel.
        ids: (N,) int64 published id of each instance, distinct, in 1..65535: ``k`` for
            instance k without tracking, its track id with tracking.
        overlay: (H, W, 3) uint8 RGB drawing, or None when not requested.
        tracks_reset: the tracker forgot every track before this frame (stamp went back).
        alternatives: per instance, the other classes the model gave the same object as
            ``(class index, score)`` pairs, best first (duplicates merged by
            ``instance.duplicate_iou``); published as further hypotheses of its detection.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    id_map: np.ndarray
    ids: np.ndarray | None = None
    overlay: np.ndarray | None = None
    tracks_reset: bool = False
    alternatives: list[list[tuple[int, float]]] | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = np.arange(1, len(self) + 1, dtype=np.int64)
        if self.alternatives is None:
            self.alternatives = [[] for _ in range(len(self))]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class FrameResult:
    """What the pipeline computed for one frame, and how long each stage took (s)."""

    semantic: SemanticResult | None = None
    instances: InstanceResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: the (1, 3, H, W) float RGB [0, 1] model input on the device (colours of 3D points)
    image: Any = None
    #: how many frames shared this frame's forward pass (its timings are the batch's)
    batch_size: int = 1
