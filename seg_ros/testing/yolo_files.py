"""Hand-made YOLO segmentation ONNX files whose answer is known (tests, docs examples).

:func:`write_yolo_seg` writes a graph in the Ultralytics export layout (input ``images``
[1, 3, H, W]; ``output0`` [1, 4 + nc + 32, anchors] or, end-to-end, [1, N, 38];
``output1`` [1, 32, H/4, W/4]; Ultralytics' metadata) whose outputs are fixed tensors: the
detections and prototypes given, whatever the image. :func:`tabletop_rows` is a scene with a
duplicate that NMS must remove, a detection under the score threshold, two overlapping
objects of different classes (class-aware NMS keeps both) and masks that cross their boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

N_COEFFS = 32


@dataclass(frozen=True)
class Row:
    """One detection of the hand-made graph, in the export's (letterboxed) pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    cls: int
    score: float
    mask: str = 'full'  # 'full': the whole box; 'left': the left half of the export


def tabletop_rows() -> list[Row]:
    """The known scene (export 320 x 416, classes cup, bottle): what survives at score 0.5 and
    IoU 0.7 is rows 0, 2 and 4.
    """
    return [
        Row((60, 90, 140, 150), 0, 0.90, 'full'),     # cup
        Row((64, 92, 142, 152), 0, 0.80, 'full'),     # its duplicate: NMS removes it
        Row((180, 110, 260, 210), 1, 0.70, 'left'),   # bottle; its mask is the export's left
        #                                               half, which crosses the box
        Row((300, 20, 340, 60), 0, 0.30, 'full'),     # under 0.5: dropped
        Row((62, 91, 141, 151), 1, 0.60, 'full'),     # a bottle on the cup: other class, kept
    ]


class _Fixed(torch.nn.Module):
    def __init__(self, out0: np.ndarray, out1: np.ndarray) -> None:
        super().__init__()
        self.register_buffer('out0', torch.from_numpy(out0))
        self.register_buffer('out1', torch.from_numpy(out1))

    def forward(self, images: torch.Tensor):
        zero = images.mean() * 0.0  # the outputs depend on the input in form only
        return self.out0 + zero, self.out1 + zero


def _prototypes(h: int, w: int) -> np.ndarray:
    """Channel 0: +1 everywhere; channel 1: +1 on the export's left half, -1 on the right."""
    protos = np.zeros((1, N_COEFFS, h // 4, w // 4), np.float32)
    protos[0, 0] = 1.0
    protos[0, 1, :, : w // 8] = 1.0
    protos[0, 1, :, w // 8:] = -1.0
    return protos


def _coefficients(kind: str) -> np.ndarray:
    c = np.zeros(N_COEFFS, np.float32)
    if kind == 'full':
        c[0] = 8.0
    else:  # left half only: 4 * ch0 + 8 * ch1 = +12 left, -4 right
        c[0], c[1] = 4.0, 8.0
    return c


def write_yolo_seg(path: str | Path, rows: list[Row] | None = None,
                   names: tuple[str, ...] = ('cup', 'bottle'), imgsz: tuple[int, int] = (320, 416),
                   end2end: bool = False, task: str = 'segment', batch: int = 1,
                   anchors: int = 64) -> Path:
    """Write the hand-made export (see the module) to ``path``; returns it."""
    import onnx

    rows = tabletop_rows() if rows is None else rows
    h, w = imgsz
    nc = len(names)
    if end2end:
        out0 = np.zeros((1, 300, 6 + N_COEFFS), np.float32)
        for i, r in enumerate(sorted(rows, key=lambda r: -r.score)):
            out0[0, i, :4] = r.box
            out0[0, i, 4], out0[0, i, 5] = r.score, r.cls
            out0[0, i, 6:] = _coefficients(r.mask)
    else:
        out0 = np.zeros((1, 4 + nc + N_COEFFS, anchors), np.float32)
        for i, r in enumerate(rows):
            x1, y1, x2, y2 = r.box
            out0[0, :4, i] = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
            out0[0, 4 + r.cls, i] = r.score
            out0[0, 4 + (1 - r.cls) % nc, i] = r.score / 10  # another class, lower
            out0[0, 4 + nc:, i] = _coefficients(r.mask)
    out1 = _prototypes(h, w)
    path = Path(path)
    x = torch.zeros(batch, 3, h, w)
    torch.onnx.export(_Fixed(out0, out1), (x,), str(path), input_names=['images'],
                      output_names=['output0', 'output1'], opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    meta = {'description': 'hand-made YOLO segmentation graph (seg_ros tests)',
            'author': 'seg_ros', 'version': 'test', 'task': task, 'stride': '32',
            'batch': str(batch), 'imgsz': str([h, w]),
            'names': str(dict(enumerate(names))), 'end2end': str(end2end)}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def expected(rows: list[Row], frame_hw: tuple[int, int], imgsz: tuple[int, int] = (320, 416)
             ) -> list[tuple[Row, np.ndarray, np.ndarray]]:
    """Each row's box (x1, y1, x2, y2) and (H, W) bool mask in the frame's own pixels: the
    letterbox undone, the mask cropped to the box.
    """
    fh, fw = frame_hw
    r = min(imgsz[0] / fh, imgsz[1] / fw)
    nh, nw = max(round(fh * r), 1), max(round(fw * r), 1)
    top, left = round((imgsz[0] - nh) / 2 - 0.1), round((imgsz[1] - nw) / 2 - 0.1)
    out = []
    for row in rows:
        x1, y1, x2, y2 = row.box
        sx, sy = fw / nw, fh / nh
        box = np.array([np.clip((x1 - left) * sx, 0, fw), np.clip((y1 - top) * sy, 0, fh),
                        np.clip((x2 - left) * sx, 0, fw), np.clip((y2 - top) * sy, 0, fh)])
        yy, xx = np.mgrid[0:fh, 0:fw]
        mask = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
        if row.mask == 'left':  # the export's left half, in frame pixels
            mask &= (xx + 0.5) * nw / fw + left < imgsz[1] / 2
        out.append((row, box, mask))
    return out
