"""The int8 graphs of a compiled model: built in warm-up, cached on disk. No rclpy.

One :class:`Int8Graphs` per compiled model (:class:`~seg_ros.core.models.backends.
CompiledLabels` and its subclasses own one). It reads the calibration set once, keys each
quantized graph by the export it was made from, the set's digest, the quantizer's versions
and options, and builds a missing graph only while :meth:`Int8Graphs.warming` is open: a
frame of a size no warm-up built runs the fp32 graph, and the model says once which size to
add to ``warmup_size``. The quantizers themselves are :mod:`seg_ros.core.models.quantize`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from seg_ros.core.models import quantize

log = logging.getLogger(__name__)


class QuantizeError(RuntimeError):
    """An int8 graph cannot be had (calibration frames unreadable, the quantizer failed)."""


def mtime(p: Path) -> float:
    """A file's modification time; 0 for a file gone meanwhile."""
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def prune(folder: Path, suffixes: Iterable[str], keep: int,
          companions: Sequence[str] = ()) -> None:
    """Keep the ``keep`` most recently used files of ``folder`` ending in ``suffixes``;
    remove the others with their ``companions`` (same name, other suffix: an IR's ``.bin``).
    """
    suffixes = tuple(suffixes)
    files = sorted((f for f in folder.iterdir() if f.suffix in suffixes), key=mtime,
                   reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)
        for other in companions:
            old.with_suffix(other).unlink(missing_ok=True)


class Int8Graphs:
    """The quantized graphs of one model, in ``folder``.

    Args:
        backend: ``openvino`` (an IR ``.xml`` + ``.bin``) or ``onnxruntime`` (``.onnx``).
        name: the model's registry name (logged).
        folder: where the graphs live (created by the caller).
        report: called with one line per build, reuse or fp32 fallback.
        calibration: called once, on the first need, for the frames to calibrate on
            (:func:`~seg_ros.core.models.quantize.calibration_set`); None = generated tables.
        keep: at most this many graphs on disk (least recently used removed).
    """

    def __init__(self, backend: str, name: str, folder: Path,
                 report: Callable[[str], None] = log.info,
                 calibration: Callable[[], quantize.CalibrationSet] | None = None,
                 keep: int = 32) -> None:
        self.backend = backend
        self.name = name
        self.folder = folder
        self.report = report
        self.keep = keep
        self._source = calibration or (lambda: quantize.calibration_set('', ''))
        self._calibration: quantize.CalibrationSet | None = None
        self._building = False
        self._fp32_sizes: set[tuple[int, ...]] = set()  # sizes already told to run fp32
        # ONNX Runtime without 8-bit dot products: 7-bit weights (no saturation in VPMADDUBSW)
        self.reduce_range = backend == 'onnxruntime' and not quantize.has_vnni()

    @contextlib.contextmanager
    def warming(self):
        """While open, graphs missing from the cache are built (quantized)."""
        self._building = True
        try:
            yield self
        finally:
            self._building = False

    def calibration(self) -> quantize.CalibrationSet:
        """The calibration set (read once)."""
        if self._calibration is None:
            try:
                self._calibration = self._source()
            except quantize.CalibrationError as exc:
                raise QuantizeError(str(exc)) from None
        return self._calibration

    def frames(self, n: int, h: int, w: int, pixels: bool) -> list[np.ndarray]:
        """A graph input per calibration frame: (n, h, w, 3) uint8 when ``pixels``, else
        (n, 3, h, w) float [0, 1] (a batch of n takes n consecutive frames).
        """
        frames = [quantize.fit(f, h, w) for f in self.calibration().frames]
        out = []
        for i in range(len(frames)):
            x = np.stack([frames[(i + j) % len(frames)] for j in range(n)])
            out.append(x if pixels else
                       np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32) / 255.0)
        return out

    def path(self, export: Path) -> Path:
        """Where the graph quantized from the ONNX file ``export`` lives."""
        key = hashlib.sha256(f'{export.stem}|{self.calibration().digest}|'
                             f'{quantize.versions(self.backend)}|{self.reduce_range}'.encode()
                             ).hexdigest()[:20]
        ext = 'xml' if self.backend == 'openvino' else 'onnx'
        return self.folder / f'{export.stem}-{key}.{ext}'

    def get(self, shape: tuple[int, ...], export_path: Path, export: Callable[[], Path],
            inputs: Callable[[], list[np.ndarray]]) -> Path | None:
        """The int8 graph for an input ``shape`` whose fp32 export is (or will be, by
        ``export()``) at ``export_path``: from the cache, else quantized now on ``inputs()``
        while warming up; None outside a warm-up when none is cached (the caller runs fp32).
        """
        if not self._building:
            path = self.path(export_path) if self._calibration is not None else None
            if path is not None and path.is_file():
                os.utime(path)
                return path
            if shape not in self._fp32_sizes:
                self._fp32_sizes.add(shape)
                self.report(f'precision=int8: no int8 graph of {self.name} for input {shape} '
                            'was built in warm-up; this size runs fp32 (add its WIDTHxHEIGHT '
                            'to warmup_size)')
            return None
        path = self.path(export_path)
        if path.is_file():
            os.utime(path)
            self.report(f'{self.backend}: int8 graph for input {shape} reused from cache '
                        f'{path}')
            return path
        onnx_file = export()
        t0 = time.perf_counter()
        calibrate_on = inputs()
        try:
            with warnings.catch_warnings(), quiet('nncf', 'onnxruntime'):
                warnings.simplefilter('ignore')
                if self.backend == 'openvino':
                    quantize.quantize_openvino(onnx_file, calibrate_on, path)
                else:
                    quantize.quantize_onnxruntime(onnx_file, calibrate_on, path,
                                                  reduce_range=self.reduce_range)
        except Exception as exc:
            raise QuantizeError(f'{self.name}: int8 quantization failed '
                                f'({type(exc).__name__}: {str(exc)[:300]})') from None
        self.report(f'{self.backend}: quantized {self.name} to int8 for input {shape} in '
                    f'{time.perf_counter() - t0:.1f}s, calibrated on '
                    f'{self.calibration().source} ({path})')
        prune(self.folder, ('.xml', '.onnx'), self.keep, companions=('.bin',))
        return path


@contextlib.contextmanager
def quiet(*loggers: str):
    """Silence libraries' INFO chatter (the exporter logs every graph pass)."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    for lg, _ in saved:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
