"""Weights files: read any state dict safely, write and read self-describing instance
weights. No rclpy.

Every file is read with ``torch.load(..., weights_only=True)``: tensors, numbers, strings
and containers only, never arbitrary pickled code.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


class ModelLoadError(RuntimeError):
    """The model cannot be built or its weights cannot be loaded (message says why)."""


#: ``format`` of a self-describing instance weights file.
INSTANCE_FORMAT = 'seg_ros.instance_weights'
INSTANCE_FORMAT_VERSION = 1


def _load_failure(exc: Exception) -> str:
    """What went wrong reading a weights file, without PyTorch's advice to retry with
    ``weights_only=False`` (which would execute arbitrary pickled code, never offered here).
    """
    text = str(exc).strip()
    if 'weights_only' in text or 'Weights only load failed' in text:
        return 'it holds objects other than tensors (an arbitrary pickle)'
    first = text.splitlines()[0] if text else type(exc).__name__
    if 'invalid load key' in first or 'zip archive' in first or 'magic number' in first:
        return f'not a PyTorch file ({first})'
    return first


def _is_text(head: bytes) -> bool:
    try:
        head.decode('utf-8')
    except UnicodeDecodeError:
        return False
    return True


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor],
                                                        dict[str, Any]]:
    """Read a weights file safely (``weights_only=True``): its state dict, and what a
    self-describing file says of itself (``{}`` for a plain state dict).

    Accepts a mapping name -> tensor, one wrapped under ``state_dict`` / ``model``, or a
    file of :func:`save_instance_weights`.

    Raises:
        ModelLoadError: missing or unreadable file, a pickle that is not a plain state dict.
    """
    p = Path(path)
    if p.is_dir() or not p.exists():
        raise ModelLoadError(f'weights file not found: {p}')
    with p.open('rb') as f:
        head = f.read(64)
    if not (head.startswith(b'PK\x03\x04') or head[:1] == b'\x80'):  # zip or legacy pickle
        kind = 'an empty file' if not head else 'a text file' if _is_text(head) else \
            'an unknown binary format'
        raise ModelLoadError(f'cannot read weights file {p}: not a PyTorch file ({kind}); it '
                             'must be a state dict saved with torch.save(model.state_dict(), '
                             'path)')
    try:
        obj = torch.load(p, map_location='cpu', weights_only=True)
    except Exception as exc:  # corrupt file, unsafe pickle, not a torch file at all
        raise ModelLoadError(f'cannot read weights file {p}: {_load_failure(exc)}; it must be '
                             'a state dict saved with torch.save(model.state_dict(), path) '
                             '(only tensors are loaded, never arbitrary pickles)') from None
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get('format') == INSTANCE_FORMAT:
        meta = {k: v for k, v in obj.items() if k != 'state_dict'}
        names = meta.get('class_names')
        if (not isinstance(meta.get('model'), str) or not isinstance(names, list)
                or not all(isinstance(n, str) for n in names)):
            raise ModelLoadError(f'{p} is a seg_ros instance weights file without a valid '
                                 'model name or class names')
    if isinstance(obj, Mapping):
        for key in ('state_dict', 'model'):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ModelLoadError(f'{p} is not a plain state dict (name -> tensor)')
    return dict(obj), meta


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a weights file (:func:`read_weights_file` without the description)."""
    return read_weights_file(path)[0]


def save_instance_weights(path: str | os.PathLike, model: torch.nn.Module, name: str,
                          class_names: Sequence[str], train_size: int,
                          extra: Mapping[str, Any] | None = None) -> None:
    """Write a self-describing instance weights file: ``state_dict`` plus ``model`` (the
    architecture), ``class_names`` (index 0 = background), ``train_size`` (shorter side it
    was trained at) and ``seg_ros_version``; readable with ``torch.load(weights_only=True)``.
    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    from seg_ros import __version__
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    obj = {'format': INSTANCE_FORMAT, 'format_version': INSTANCE_FORMAT_VERSION,
           'model': name, 'class_names': [str(c) for c in class_names],
           'train_size': int(train_size), 'seg_ros_version': __version__,
           **dict(extra or {}), 'state_dict': state}
    p = Path(path)
    tmp = p.with_name(p.name + '.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, p)


def half_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a weights file with its floating-point tensors stored as fp16 (half the size;
    loading casts them back to the model's fp32). How the shipped files were made.
    """
    state, meta = read_weights_file(src)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    obj = {**meta, 'state_dict': half} if meta else half
    p = Path(dst)
    tmp = p.with_name(p.name + '.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, p)
