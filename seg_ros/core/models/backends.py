"""Inference backends for the semantic model: eager PyTorch, OpenVINO, ONNX Runtime. No rclpy.

The torch backend runs the model as it is. The others run one compiled graph per input
shape: the loaded torch model, wrapped with our normalisation, its input resize, the
upsampling back to the image size and the class maximum
(:class:`~seg_ros.core.inference.semantic.LabelGraph`), is exported to ONNX once, cached on
disk under a key of the weights' content, the model, the input shape and the exporter's
version, and compiled by the backend. The frame goes in as the float
[0, 1] RGB tensor the pipeline makes anyway; the labels come out as uint8/uint16, so only
one small image crosses back from the backend.

``precision: int8`` quantizes that export with the backend's own tool
(:mod:`seg_ros.core.models.quantize`: NNCF for OpenVINO, ``onnxruntime.quantization`` for
ONNX Runtime), calibrated on the model's calibration set, only while warming up
(:meth:`CompiledLabels.warming`): a frame of a size no warm-up built an int8 graph for (and
none is cached) runs the backend's fp32 graph, and the loader says once which size to add
to ``warmup_size``.

Caches: ``<cache_dir>/onnx/*.onnx`` (at most :data:`DISK_ENTRIES` files, oldest removed),
``<cache_dir>/int8/`` the quantized graphs (keyed by the export's key, the calibration
set's digest and the quantizer's versions; same bound),
OpenVINO's own compiled-blob cache in ``<cache_dir>/openvino-<version>/``, TensorRT engines
in ``<cache_dir>/tensorrt-<version>/``; in memory at most :data:`SHAPES_IN_MEMORY` compiled
shapes (least recently used dropped).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
import logging
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from seg_ros.core.config.names import BACKENDS, DEFAULT_CACHE_DIR  # noqa: F401  (re-exported)
from seg_ros.core.models import quantize

#: the Python module each backend needs, and the pip package that brings it
_MODULES = {'openvino': ('openvino', 'openvino'), 'onnxruntime': ('onnxruntime', 'onnxruntime')}
OPSET = 18
DISK_ENTRIES = 32
SHAPES_IN_MEMORY = 4

log = logging.getLogger(__name__)


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


def cache_path(cache_dir: str) -> Path:
    """``backend.cache_dir`` as a path: ``~`` expanded; the default follows
    ``$XDG_CACHE_HOME`` when that is set (``$XDG_CACHE_HOME/seg_ros``).
    """
    if (cache_dir or DEFAULT_CACHE_DIR) == DEFAULT_CACHE_DIR and os.environ.get('XDG_CACHE_HOME'):
        return Path(os.environ['XDG_CACHE_HOME']) / 'seg_ros'
    return Path(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes and bytes of every tensor)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to('cpu').contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CompiledLabels:
    """The labels of a frame batch from a compiled backend, one compiled graph per shape.

    Args:
        backend: ``openvino`` or ``onnxruntime``.
        graph: the graph to export (on the CPU: export traces it there): a
            :class:`~seg_ros.core.inference.semantic.LabelGraph` (subclasses: their own).
        name: the model's registry name (part of the cache key).
        device: where input tensors live and labels are returned.
        precision: ``fp32`` | ``fp16`` | ``bf16``; applied by the backend's own mechanism
            (OpenVINO's inference precision hint; ONNX Runtime runs fp32 on the CPU).
        cache_dir: root of the on-disk cache.
        report: called with one line per export/compile (the node logs it).
        calibration: for ``int8``, called once (lazily, in the first warm-up that builds a
            graph) for the frames to calibrate on
            (:func:`~seg_ros.core.models.quantize.calibration_set`); None = generated tables.
    """

    def __init__(self, backend: str, graph: torch.nn.Module, name: str, device: torch.device,
                 precision: str = 'fp32', cache_dir: str = DEFAULT_CACHE_DIR,
                 report: Callable[[str], None] = log.info,
                 calibration: Callable[[], quantize.CalibrationSet] | None = None) -> None:
        self.backend = backend
        self.graph = graph.eval()
        self.name = name
        self.device = torch.device(device)
        self.cache_dir = cache_path(cache_dir)
        self.report = report
        self.digest = weights_digest(graph)
        self._compiled: OrderedDict[tuple[int, ...], Callable] = OrderedDict()
        self._calibration_source = calibration or (lambda: quantize.calibration_set('', ''))
        self._calibration: quantize.CalibrationSet | None = None
        self._building = False  # int8 graphs are built only while warming up
        self._fp32_sizes: set[tuple[int, ...]] = set()  # sizes told to run fp32 (int8)
        self.precision, why = self._effective_precision(precision)
        if why:
            report(why)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            (self.cache_dir / 'onnx').mkdir(exist_ok=True)
            (self.cache_dir / 'int8').mkdir(exist_ok=True)
        except OSError as exc:
            raise BackendError(f'backend.cache_dir {str(self.cache_dir)!r} cannot be '
                               f'created: {exc.strerror or exc}') from None

    # -- precision ------------------------------------------------------------------------
    def _effective_precision(self, precision: str) -> tuple[str, str]:
        if precision == 'fp32':
            return 'fp32', ''
        if precision == 'int8':
            if self.device.type != 'cpu':
                return 'fp32', (f'precision=int8: {self.backend} int8 is built for the CPU '
                                f'here; running fp32 on {self.device}')
            why = quantize.quantizer_missing(self.backend)
            return ('fp32', f'precision=int8: {why}; running fp32') if why else ('int8', '')
        if self.backend == 'openvino' and self.device.type == 'cpu':
            import openvino as ov
            caps = ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
            need = {'bf16': 'BF16', 'fp16': 'FP16'}[precision]
            if need in caps:
                return precision, ''
            return 'fp32', (f'precision={precision}: this CPU has no {need} support in '
                            'OpenVINO; running fp32')
        if self.backend == 'onnxruntime' and self.device.type == 'cpu':
            return 'fp32', (f'precision={precision}: ONNX Runtime has no reduced-precision '
                            'mode on the CPU; running fp32 (use backend openvino)')
        return precision, ''

    # -- what differs between graphs: the public hooks a subclass overrides --------------
    # (models.instance_backends: float tensors in and out, several outputs): key_extra,
    # prepare, output_names, export_options, openvino_runner, onnxruntime_runner; the
    # runners build on openvino_request / ort_session.
    def key_extra(self) -> str:
        """What else than weights, model, shape and versions tells two exports apart."""
        return str(self.graph.label_dtype) + (' chain-max' if self.graph.chain_max else '')

    def prepare(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """Set the graph up for tracing at ``shape`` (sizes stay static in the export)."""
        self.graph.image_hw = _nhw(shape, dtype)[1:]

    def output_names(self) -> list[str]:
        """The ONNX graph's output names."""
        return ['labels']

    def export_options(self) -> dict:
        """Extra ``torch.onnx.export`` arguments (e.g. a dynamic dimension)."""
        return {}

    # -- export and cache -----------------------------------------------------------------
    def onnx_path(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Path:
        """Where the export for an input ``shape`` of ``dtype`` lives: keyed by weights
        content, model, input shape and type, torch version and opset.
        """
        key = hashlib.sha256(f'{self.digest}|{self.name}|{shape}|{dtype}|{torch.__version__}|'
                             f'{OPSET}|{self.key_extra()}'.encode()).hexdigest()[:20]
        n, h, w = _nhw(shape, dtype)
        kind = 'u8' if dtype == torch.uint8 else 'f32'
        return self.cache_dir / 'onnx' / f'{self.name}-n{n}-{h}x{w}-{kind}-{key}.onnx'

    def export(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Path:
        """The ONNX file for an input ``shape`` of ``dtype``, exported now unless cached."""
        path = self.onnx_path(shape, dtype)
        if path.is_file():
            os.utime(path)  # most recently used: pruned last
            self.report(f'{self.backend}: ONNX export for input {shape} reused from cache '
                        f'{path}')
            return path
        t0 = time.perf_counter()
        tmp = path.with_suffix(f'.{os.getpid()}.tmp')
        x = torch.zeros(shape, dtype=dtype)
        self.prepare(shape, dtype)
        try:
            # the dynamo exporter: the legacy one has no antialiased resize
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
                    contextlib.redirect_stdout(io.StringIO()), _quiet('onnx_ir', 'onnxscript'):
                warnings.simplefilter('ignore')
                torch.onnx.export(self.graph.to('cpu'), (x,), str(tmp), dynamo=True,
                                  opset_version=OPSET, input_names=['image'],
                                  output_names=self.output_names(), verbose=False,
                                  external_data=False, **self.export_options())
            os.replace(tmp, path)  # atomic: a concurrent node never reads half a file
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise BackendError(f'{self.name}: ONNX export failed ({type(exc).__name__}: '
                               f'{str(exc)[:300]})') from None
        self.report(f'{self.backend}: exported {self.name} for input {shape} to ONNX in '
                    f'{time.perf_counter() - t0:.1f}s ({path})')
        self._prune()
        return path

    def _prune(self) -> None:
        files = sorted((self.cache_dir / 'onnx').glob('*.onnx'), key=_mtime, reverse=True)
        for old in files[DISK_ENTRIES:]:
            old.unlink(missing_ok=True)

    # -- compile and run --------------------------------------------------------------------
    # -- int8 -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def warming(self):
        """While open, ``int8`` graphs missing from the cache are built (quantized)."""
        self._building = True
        try:
            yield self
        finally:
            self._building = False

    def calibration(self) -> quantize.CalibrationSet:
        """The calibration set (read once)."""
        if self._calibration is None:
            try:
                self._calibration = self._calibration_source()
            except quantize.CalibrationError as exc:
                raise BackendError(str(exc)) from None
        return self._calibration

    def calibration_inputs(self, shape: tuple[int, ...], dtype: torch.dtype
                           ) -> list[np.ndarray]:
        """The graph's input for each calibration frame: (N, H, W, 3) uint8 pixels or
        (N, 3, H, W) float [0, 1] (a batch of N takes N consecutive frames).
        """
        n, h, w = _nhw(shape, dtype)
        frames = [quantize.fit(f, h, w) for f in self.calibration().frames]
        out = []
        for i in range(len(frames)):
            x = np.stack([frames[(i + j) % len(frames)] for j in range(n)])
            out.append(x if dtype == torch.uint8 else
                       np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32) / 255.0)
        return out

    def int8_path(self, shape: tuple[int, ...], dtype: torch.dtype) -> Path:
        """Where the quantized graph for an input ``shape`` lives: the export's key, the
        calibration set's digest, the quantizer's versions and options.
        """
        reduce = self.backend == 'onnxruntime' and not quantize.has_vnni()
        key = hashlib.sha256(f'{self.onnx_path(shape, dtype).stem}|{self.calibration().digest}|'
                             f'{quantize.versions(self.backend)}|{reduce}'.encode()
                             ).hexdigest()[:20]
        ext = 'xml' if self.backend == 'openvino' else 'onnx'
        return self.cache_dir / 'int8' / f'{self.onnx_path(shape, dtype).stem}-{key}.{ext}'

    def quantized(self, shape: tuple[int, ...], dtype: torch.dtype) -> Path | None:
        """The int8 graph for ``shape``: from the cache, else built now while warming up;
        None outside a warm-up when none is cached (the caller runs fp32).
        """
        if not self._building:
            path = self.int8_path(shape, dtype) if self._calibration is not None else None
            if path is not None and path.is_file():
                os.utime(path)
                return path
            if shape not in self._fp32_sizes:
                self._fp32_sizes.add(shape)
                self.report(f'precision=int8: no int8 graph of {self.name} for input {shape} '
                            'was built in warm-up; this size runs fp32 (add its WIDTHxHEIGHT '
                            'to warmup_size)')
            return None
        path = self.int8_path(shape, dtype)
        if path.is_file():
            os.utime(path)
            self.report(f'{self.backend}: int8 graph for input {shape} reused from cache '
                        f'{path}')
            return path
        onnx_file = self.export(shape, dtype)
        t0 = time.perf_counter()
        inputs = self.calibration_inputs(shape, dtype)
        try:
            with warnings.catch_warnings(), _quiet('nncf', 'onnxruntime'):
                warnings.simplefilter('ignore')
                if self.backend == 'openvino':
                    quantize.quantize_openvino(onnx_file, inputs, path)
                else:
                    quantize.quantize_onnxruntime(onnx_file, inputs, path,
                                                  reduce_range=not quantize.has_vnni())
        except Exception as exc:
            raise BackendError(f'{self.name}: int8 quantization failed ({type(exc).__name__}: '
                               f'{str(exc)[:300]})') from None
        self.report(f'{self.backend}: quantized {self.name} to int8 for input {shape} in '
                    f'{time.perf_counter() - t0:.1f}s, calibrated on '
                    f'{self.calibration().source} ({path})')
        self._prune_int8()
        return path

    def _prune_int8(self) -> None:
        files = sorted((f for f in (self.cache_dir / 'int8').iterdir()
                        if f.suffix in ('.xml', '.onnx')), key=_mtime, reverse=True)
        for old in files[DISK_ENTRIES:]:
            old.unlink(missing_ok=True)
            old.with_suffix('.bin').unlink(missing_ok=True)

    def compiled(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The runner for an input ``shape`` of ``dtype``, compiled once (bounded in-memory
        cache).
        """
        key = (*shape, str(dtype))
        run = self._compiled.get(key)
        if run is not None:
            self._compiled.move_to_end(key)
            return run
        int8 = self.quantized(shape, dtype) if self.precision == 'int8' else None
        path = int8 or self.export(shape, dtype)
        t0 = time.perf_counter()
        make = self.openvino_runner if self.backend == 'openvino' else self.onnxruntime_runner
        run = make(path, _nhw(shape, dtype), dtype)
        self.report(f'{self.backend}: compiled for input {shape} '
                    f'({"int8" if int8 else self.precision.replace("int8", "fp32")}) in '
                    f'{time.perf_counter() - t0:.1f}s')
        self._compiled[key] = run
        while len(self._compiled) > SHAPES_IN_MEMORY:
            self._compiled.popitem(last=False)
        return run

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Labels (N, H, W) for a (N, 3, H, W) float [0, 1] batch, or a (N, H, W, 3) uint8
        RGB batch, on ``device``.
        """
        return self.compiled(tuple(int(s) for s in image.shape), image.dtype)(image)

    def openvino_request(self, path: Path, what: str = 'backend'):
        """An OpenVINO infer request of the ONNX file on the CPU, with this graph's
        precision hint and OpenVINO's compiled-blob cache in ``cache_dir``.
        """
        import openvino as ov
        if self.device.type != 'cpu':
            raise BackendError(f'backend openvino runs on the CPU here; use device cpu, or '
                               f'{what} onnxruntime/torch on CUDA')
        core = ov.Core()
        core.set_property({'CACHE_DIR': str(self.cache_dir / f'openvino-{ov.__version__}')})
        hint = {'fp32': 'f32', 'bf16': 'bf16', 'fp16': 'f16', 'int8': 'f32'}[self.precision]
        if self.precision == 'int8' and path.parent.name == 'int8' and 'BF16' in \
                core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'):
            # what NNCF left in float runs at OpenVINO's own default for the CPU: bf16 where
            # it has BF16 (CamVid: the same mIoU as with an f32 remainder; the lraspp int8
            # graph at 640x480 34.0 vs 51.2 ms), f32 elsewhere; a size that runs the fp32
            # graph stays f32
            hint = 'bf16'
        compiled = core.compile_model(str(path), 'CPU', {
            'INFERENCE_PRECISION_HINT': hint, 'PERFORMANCE_HINT': 'LATENCY'})
        return compiled.create_infer_request()

    def openvino_runner(self, path: Path, nhw: tuple[int, int, int], dtype: torch.dtype):
        """The callable that runs the compiled ONNX file at ``path`` on OpenVINO."""
        request = self.openvino_request(path)

        def run(image: torch.Tensor) -> torch.Tensor:
            x = image.contiguous().numpy()
            out = request.infer({0: x}, share_inputs=True, share_outputs=True)[0]
            return torch.from_numpy(out.copy())  # the request's buffer is reused next call
        return run

    def ort_session(self, path: Path, what: str = 'backend', spin: bool = True,
                     tensorrt: bool = True):
        """An ONNX Runtime session of the ONNX file on ``device``: all graph optimisations,
        CUDA's provider on CUDA (and TensorRT's, engines cached, when ``tensorrt`` and
        installed); ``spin`` False stops idle threads spinning between calls.
        """
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            so.add_session_config_entry('session.intra_op.allow_spinning', '0')
        providers: list = ['CPUExecutionProvider']
        if self.device.type == 'cuda':
            avail = ort.get_available_providers()
            if 'CUDAExecutionProvider' not in avail:
                raise BackendError(f'{what} onnxruntime on CUDA needs onnxruntime-gpu (pip '
                                   'install onnxruntime-gpu); this one has ' + ', '.join(avail))
            dev_id = self.device.index or 0
            providers = [('CUDAExecutionProvider', {'device_id': dev_id})]
            if tensorrt and 'TensorrtExecutionProvider' in avail:
                engines = self.cache_dir / f'tensorrt-{ort.__version__}'
                engines.mkdir(exist_ok=True)
                providers.insert(0, ('TensorrtExecutionProvider', {
                    'device_id': dev_id, 'trt_engine_cache_enable': True,
                    'trt_engine_cache_path': str(engines),
                    'trt_fp16_enable': self.precision == 'fp16'}))
        return ort.InferenceSession(str(path), so, providers=providers)

    def onnxruntime_runner(self, path: Path, nhw: tuple[int, int, int], dtype: torch.dtype):
        """The callable that runs the ONNX file at ``path`` on ONNX Runtime (IO binding)."""
        session = self.ort_session(path)
        cuda = self.device.type == 'cuda'
        n, h, w = nhw
        in_np = np.uint8 if dtype == torch.uint8 else np.float32
        dtype = self.graph.label_dtype
        binding = session.io_binding()
        dev_type = 'cuda' if cuda else 'cpu'
        dev_id = self.device.index or 0 if cuda else 0
        np_out = {torch.uint8: 'uint8', torch.uint16: 'uint16'}[dtype]

        def run(image: torch.Tensor) -> torch.Tensor:
            x = image.contiguous()
            out = torch.empty((n, h, w), dtype=dtype, device=self.device)
            binding.bind_input('image', dev_type, dev_id, in_np, list(x.shape),
                               x.data_ptr())
            binding.bind_output('labels', dev_type, dev_id, np.dtype(np_out), list(out.shape),
                                out.data_ptr())
            session.run_with_iobinding(binding)
            return out
        return run


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Silence the exporter's INFO chatter (it logs every graph pass)."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    for lg, _ in saved:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _nhw(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[int, int, int]:
    """(N, H, W) of an input: (N, H, W, 3) uint8 pixels or (N, 3, H, W) float."""
    if dtype == torch.uint8:
        return int(shape[0]), int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[2]), int(shape[3])


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
