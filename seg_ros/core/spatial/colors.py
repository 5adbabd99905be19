"""Class colour palettes. No rclpy."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL VOC bit-interleaved colour map: (n, 3) uint8, distinct for every index."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def make_palette(num_classes: int, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(num_classes, 3) uint8 palette: ``colors`` where given, VOC colours for the rest.

    Raises:
        ValueError: a colour is not three integers in [0, 255].
    """
    pal = voc_palette(num_classes)
    for i, c in enumerate(list(colors or [])[:num_classes]):
        if len(c) != 3 or any(not 0 <= int(v) <= 255 for v in c):
            raise ValueError(f'colour {i} must be three integers in [0, 255], got {c!r}')
        pal[i] = [int(v) for v in c]
    return pal
