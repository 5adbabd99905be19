"""Segmentation metrics (confusion matrix, per-class IoU). No rclpy."""
from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """Confusion matrix ``[true, predicted]`` of two integer label tensors of one shape.

    Pixels whose target equals ``ignore_index`` (or lies outside ``[0, num_classes)``) are
    skipped.

    Returns:
        (num_classes, num_classes) int64 tensor on the CPU.

    Raises:
        ValueError: shapes differ, or a prediction lies outside ``[0, num_classes)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f'shape mismatch: pred {tuple(pred.shape)} vs target '
                         f'{tuple(target.shape)}')
    t = target.reshape(-1).long().cpu()
    p = pred.reshape(-1).long().cpu()
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    t, p = t[keep], p[keep]
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f'predictions outside [0, {num_classes})')
    conf = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return conf.reshape(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor) -> list[float]:
    """Per-class IoU = TP / (TP + FP + FN); NaN-free (a class absent everywhere gets 0)."""
    conf = conf.double()
    tp = conf.diagonal()
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.zeros_like(tp))
    return iou.tolist()
