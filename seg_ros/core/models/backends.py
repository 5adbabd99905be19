"""Inference backends for the semantic model: eager PyTorch, OpenVINO, ONNX Runtime. No rclpy.

The torch backend runs the model as it is. The others run one compiled graph per input
shape: the loaded torch model, wrapped with our normalisation, its input resize, the
upsampling back to the image size and the class maximum
(:class:`~seg_ros.core.inference.semantic.LabelGraph`), is exported to ONNX once, cached on
disk under a key of the weights' content, the model, the input shape and the exporter's
version, and compiled by the backend. The frame goes in as the float
[0, 1] RGB tensor the pipeline makes anyway; the labels come out as uint8/uint16, so only
one small image crosses back from the backend.

``precision: int8`` quantizes that export in warm-up (:mod:`~seg_ros.core.models.int8_graphs`,
:mod:`~seg_ros.core.models.quantize`).

Caches: ``<cache_dir>/onnx/*.onnx`` (at most :data:`DISK_ENTRIES` files, oldest removed),
``<cache_dir>/int8/`` the quantized graphs (same bound),
OpenVINO's own compiled-blob cache in ``<cache_dir>/openvino-<version>/``, TensorRT engines
in ``<cache_dir>/tensorrt-<version>/``; in memory at most :data:`SHAPES_IN_MEMORY` compiled
shapes (least recently used dropped).
"""
from __future__ import annotations

import contextlib
import hashlib
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
from seg_ros.core.models import int8_graphs, quantize
from seg_ros.core.models.availability import BackendError, installed, resolve  # noqa: F401  (re-exported)

OPSET = 18
DISK_ENTRIES = 32
SHAPES_IN_MEMORY = 4

log = logging.getLogger(__name__)


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
        self.int8 = int8_graphs.Int8Graphs(backend, name, self.cache_dir / 'int8', report,
                                           calibration, keep=DISK_ENTRIES)
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
        return str(self.graph.label_dtype) + (' chain-max' if self.graph.chain_max else '') + \
            (' coarse' if self.graph.coarse else '')

    def prepare(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """Set the graph up for tracing at ``shape`` (sizes stay static in the export)."""
        self.graph.image_hw = _nhw(shape, dtype)[1:]

    def output_names(self) -> list[str]:
        """The ONNX graph's output names."""
        return ['scores' if self.graph.coarse else 'labels']

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
                    contextlib.redirect_stdout(io.StringIO()), \
                    int8_graphs.quiet('onnx_ir', 'onnxscript'):
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
        int8_graphs.prune(self.cache_dir / 'onnx', ('.onnx',), DISK_ENTRIES)

    # -- int8 (the graphs, their cache and calibration: models.int8_graphs) ----------------
    def warming(self):
        """A context: while open, ``int8`` graphs missing from the cache are built."""
        return self.int8.warming()

    def calibration_inputs(self, shape: tuple[int, ...], dtype: torch.dtype
                           ) -> list[np.ndarray]:
        """The graph's input for each calibration frame: (N, H, W, 3) uint8 pixels or
        (N, 3, H, W) float [0, 1] (a batch of N takes N consecutive frames).
        """
        return self.int8.frames(*_nhw(shape, dtype), pixels=dtype == torch.uint8)

    # -- compile and run --------------------------------------------------------------------
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
        int8 = None
        if self.precision == 'int8':
            try:
                int8 = self.int8.get(shape, self.onnx_path(shape, dtype),
                                     lambda: self.export(shape, dtype),
                                     lambda: self.calibration_inputs(shape, dtype))
            except int8_graphs.QuantizeError as exc:
                raise BackendError(str(exc)) from None
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
        RGB batch, on ``device`` (a ``coarse`` graph's (N, C, h, w) float scores instead).
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
        shape: tuple[int, ...] = (n, h, w)
        dtype = self.graph.label_dtype
        if self.graph.coarse:  # float scores of the graph's static shape
            shape, dtype = tuple(int(d) for d in session.get_outputs()[0].shape), torch.float32
        binding = session.io_binding()
        dev_type = 'cuda' if cuda else 'cpu'
        dev_id = self.device.index or 0 if cuda else 0
        np_out = {torch.uint8: 'uint8', torch.uint16: 'uint16', torch.float32: 'float32'}[dtype]
        name = self.output_names()[0]

        def run(image: torch.Tensor) -> torch.Tensor:
            x = image.contiguous()
            out = torch.empty(shape, dtype=dtype, device=self.device)
            binding.bind_input('image', dev_type, dev_id, in_np, list(x.shape),
                               x.data_ptr())
            binding.bind_output(name, dev_type, dev_id, np.dtype(np_out), list(out.shape),
                                out.data_ptr())
            session.run_with_iobinding(binding)
            return out
        return run



def _nhw(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[int, int, int]:
    """(N, H, W) of an input: (N, H, W, 3) uint8 pixels or (N, 3, H, W) float."""
    if dtype == torch.uint8:
        return int(shape[0]), int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[2]), int(shape[3])

