"""Which inference backends import here, and which one runs (``backend: auto``). No rclpy.

A backend is usable when its Python packages import (``onnx`` besides its own); a package
that is installed but fails to import (a missing shared library, an incompatible version) is
told apart from one that is absent, since ``pip install`` would not fix it.
"""
from __future__ import annotations

import functools
import importlib

import torch

from seg_ros.core.config.names import BACKENDS
from seg_ros.core.models import quantize

#: the Python module each backend needs, and the pip package that brings it
_MODULES = {'openvino': ('openvino', 'openvino'), 'onnxruntime': ('onnxruntime', 'onnxruntime')}


class BackendError(RuntimeError):
    """A backend cannot be used (not installed, export failed): the message says why."""


@functools.cache
def _import_error(module: str) -> str | None:
    """None when ``module`` imports; else why: 'not installed', or the error of a broken
    install (a missing shared library, an incompatible version), which pip install would
    not fix.
    """
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.split('.')[0] != exc.name.split('.')[0]:
            return f'broken: {type(exc).__name__}: {exc}'
        return 'not installed'
    except Exception as exc:  # installed but broken
        return f'broken: {type(exc).__name__}: {str(exc)[:300]}'
    return None


def _importable(module: str) -> bool:
    return _import_error(module) is None


def installed(name: str) -> bool:
    """Whether the backend's Python packages import here (torch always)."""
    if name == 'torch':
        return True
    return _importable(_MODULES[name][0]) and _importable('onnx')


def resolve(spec: str, device: torch.device, precision: str = 'fp32') -> str:
    """The backend to run: ``auto`` -> the fastest one installed for ``device``.

    On the CPU (BENCHMARKS.md, "Backends"): for fp32 ONNX Runtime, then OpenVINO; for
    bf16/fp16/int8 OpenVINO (its precision hint; NNCF's int8), then ONNX Runtime; torch when
    neither is installed. On CUDA it is torch: no GPU was available to measure the others
    against it.

    Raises:
        BackendError: unknown name, or the named backend is not installed (with the pip
            command that installs it).
    """
    if spec not in BACKENDS:
        raise BackendError(f'backend must be one of {list(BACKENDS)}, got {spec!r}')
    if spec == 'auto':
        if device.type != 'cpu':
            return 'torch'
        order = ('onnxruntime', 'openvino') if precision == 'fp32' else \
            ('openvino', 'onnxruntime')
        if precision == 'int8':  # the first that can quantize here, else as for fp32
            able = [b for b in order if installed(b) and not quantize.quantizer_missing(b)]
            order = (*able, *order)
        return next(b for b in (*order, 'torch') if installed(b))
    if not installed(spec):
        mods = [(m, p) for m, p in (_MODULES[spec], ('onnx', 'onnx')) if not _importable(m)]
        broken = {p: e for m, p in mods if (e := _import_error(m) or '').startswith('broken')}
        if broken:
            raise BackendError(f'backend {spec!r} is installed but does not import: ' + '; '.join(
                f'{p} {e}' for p, e in broken.items()) + ' (fix the installation, or choose '
                'backend torch or auto)')
        missing = [p for _, p in mods]
        raise BackendError(f'backend {spec!r} is not installed here (no Python module '
                           f'{" and ".join(missing)}): pip install {" ".join(missing)}, or '
                           'choose backend torch or auto')
    return spec
