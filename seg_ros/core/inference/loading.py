"""Settings -> the loaded models, on the chosen device, warmed up. No rclpy.

Shared by the live node (:mod:`seg_ros.ros.engine`) and ``segment_bag``: the same
parameters load the same models, with the same precision fallback and the same refusals.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from seg_ros.core.config.names import DEPTH_OBJECTS, YOLO_SEG
from seg_ros.core.config.params import names
from seg_ros.core.config.settings import Settings
from seg_ros.core.inference.instances import InstanceSegmenter
from seg_ros.core.inference.pipeline import Pipeline, resolve_device
from seg_ros.core.inference.semantic import SemanticSegmenter
from seg_ros.core.models import backends
from seg_ros.core.models.backends import BackendError
from seg_ros.core.models.instance_backends import compile_instance_model
from seg_ros.core.models.quantize import calibration_set
from seg_ros.core.models.registry import (
    LoadedModel,
    ModelLoadError,
    load_instance_model,
    load_semantic_model,
)
from seg_ros.core.models.yolo_seg import is_yolo_file, load_yolo_model
from seg_ros.core.spatial.depth_objects import CLASS_NAMES
from seg_ros.core.spatial.depth_objects_model import DepthObjectsModel, params_from


class LoadError(RuntimeError):
    """The models cannot be loaded with these settings: one clear line."""


def _say(_text: str) -> None:
    return None


def _which(exc: BackendError) -> str:
    """Which model's backend an export or compile error came from."""
    return 'instance' if '-backbone' in str(exc) or 'instance.backend' in str(exc) \
        else 'semantic'


def load_pipeline(settings: Settings, info: Callable[[str], None] = _say,
                  warn: Callable[[str], None] = _say, warm_up: bool | None = None) -> Pipeline:
    """Load the enabled models of ``settings`` and (unless ``warm_up`` is False, or the
    ``warmup`` parameter is) run them once on a blank frame of the path frames will take.

    Args:
        info, warn: where to say what was loaded (a logger's methods).

    Raises:
        LoadError: bad device, model, weights or backend (the reason says which).
    """
    p = settings
    try:
        device = resolve_device(p['device'])
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    precision = p['precision']
    try:
        sem_backend = backends.resolve(p['semantic.backend'], device, precision)
    except BackendError as exc:
        raise LoadError(f'semantic.backend: {exc}') from None
    try:
        # the same rule as the semantic model's, measured for Mask R-CNN backbones too
        # (BENCHMARKS.md, "Instances on a CPU")
        inst_backend = backends.resolve(p['instance.backend'], device, precision) \
            if p['instance.enabled'] else 'torch'
    except BackendError as exc:
        raise LoadError(f'instance.backend: {exc}') from None

    def torch_precision(what: str) -> str:
        if precision == 'int8':
            warn(f'precision=int8: {what} backend torch has no int8 mode; running fp32 (int8 '
                 'is a compiled backend\'s: openvino or onnxruntime)')
            return 'fp32'
        if device.type != 'cuda' and precision != 'fp32':
            warn(f'precision={precision}: {what} on torch needs CUDA; running fp32 on {device}')
            return 'fp32'
        return precision

    def report(what: str, loaded) -> None:
        msg = f'{what}: {loaded.name}, {loaded.num_classes} classes, {loaded.source}'
        if loaded.random_init:
            warn(msg + ' -- RANDOM WEIGHTS: outputs are meaningless')
        else:
            info(msg)
    semantic = instance = None
    try:
        if p['semantic.enabled']:
            loaded = load_semantic_model(
                p['semantic.model'], p['semantic.weights'], p['semantic.num_classes'],
                names(p['semantic.class_names']), device)
            semantic = SemanticSegmenter(
                loaded, device, p['semantic.input_size'],
                torch_precision('semantic') if sem_backend == 'torch' else precision,
                p['semantic.channels_last'], p['semantic.compile'], backend=sem_backend,
                cache_dir=p['backend.cache_dir'], report=info,
                calibration=_calibration(p, loaded, warn))
            report('semantic', loaded)
            info(f'semantic backend: {semantic.backend}'
                 + (' (auto)' if p['semantic.backend'] == 'auto' else ''))
        if p['instance.enabled'] and p['instance.model'] == DEPTH_OBJECTS:
            instance = _depth_objects_segmenter(p, device, info)
            report('instance', instance.loaded)
        elif p['instance.enabled'] and (p['instance.model'] == YOLO_SEG or (
                not p['instance.model'] and is_yolo_file(p['instance.weights']))):
            instance = _yolo_segmenter(p, device, inst_backend, precision, info, warn)
            report('instance', instance.loaded)
        elif p['instance.enabled']:
            if is_yolo_file(p['instance.weights']):
                raise ModelLoadError(
                    f'instance.weights {p["instance.weights"]} is an ONNX file (a YOLO '
                    f'segmentation export), instance.model {p["instance.model"]} is a torch '
                    'architecture: leave instance.model empty or set yolo_seg')
            loaded = load_instance_model(
                p['instance.model'], p['instance.weights'], p['instance.num_classes'],
                names(p['instance.class_names']), device,
                min_size=p['instance.min_size'], max_size=p['instance.max_size'],
                score_threshold=p.score_threshold,
                max_detections=p['instance.max_detections'],
                max_proposals=p['instance.max_proposals'])
            if inst_backend != 'torch':
                compile_instance_model(loaded.model, inst_backend, loaded.name, device,
                                       precision, p['backend.cache_dir'], report=info,
                                       calibration=_calibration(p, loaded, warn))
            instance = InstanceSegmenter(
                loaded, device, p.score_threshold, p.mask_threshold,
                p['instance.max_detections'], p.classes,
                torch_precision('instance') if inst_backend == 'torch' else 'fp32')
            report('instance', loaded)
            info(f'instance backend: {inst_backend}'
                 + (' (auto)' if p['instance.backend'] == 'auto' else '')
                 + ('' if inst_backend == 'torch' else ' (backbone, FPN, RPN head, box '
                    'head and mask head compiled; proposals, ROI align, NMS and mask '
                    'pasting in torch)'))
        pipeline = Pipeline(device, semantic, instance)
    except (ModelLoadError, ValueError) as exc:
        raise LoadError(str(exc)) from None
    except BackendError as exc:
        raise LoadError(f'{_which(exc)}.backend: {exc}') from None
    if p['warmup'] if warm_up is None else warm_up:
        t0 = time.perf_counter()
        try:
            for height, width in p.warmup_sizes:
                pipeline.warm_up(height, width, keep_image=p.depth_enabled)
        except BackendError as exc:
            raise LoadError(f'{_which(exc)}.backend: {exc}') from None
        sizes = ', '.join(f'{w}x{h}' for h, w in p.warmup_sizes)
        info(f'warm-up done in {time.perf_counter() - t0:.2f}s ({sizes})')
    return pipeline


def _calibration(p: Settings, loaded: LoadedModel, warn: Callable[[str], None]):
    """The int8 calibration set of ``loaded``, read when first needed."""
    return lambda: calibration_set(p['int8.calibration_dir'], loaded.calibration, warn)


def _yolo_segmenter(p: Settings, device, backend: str, precision: str,
                    info: Callable[[str], None], warn: Callable[[str], None]
                    ) -> InstanceSegmenter:
    """A YOLO segmentation ONNX served like every instance model (ONNX Runtime by default,
    OpenVINO through instance.backend; fp32).
    """
    weights = p['instance.weights']
    if not is_yolo_file(weights):
        raise ModelLoadError(f'instance.model yolo_seg needs instance.weights: FILE.onnx (a '
                             f'YOLO segmentation export), got {weights!r}')
    if backend == 'torch':
        if p['instance.backend'] == 'torch':
            info('instance.backend torch: a YOLO segmentation ONNX runs on ONNX Runtime')
        backend = 'onnxruntime'
    if precision != 'fp32':
        warn(f'precision={precision}: a YOLO segmentation ONNX runs as exported (fp32 here)')
    loaded = load_yolo_model(weights, backend, device, names(p['instance.class_names']),
                             p['instance.num_classes'], p.score_threshold,
                             p['instance.max_detections'], p['instance.nms_iou'],
                             p['backend.cache_dir'])
    info(f'instance backend: {backend} (YOLO segmentation ONNX)')
    return InstanceSegmenter(loaded, device, p.score_threshold, p.mask_threshold,
                             p['instance.max_detections'], p.classes, 'fp32')


def _depth_objects_segmenter(p: Settings, device, info: Callable[[str], None]
                             ) -> InstanceSegmenter:
    """``instance.model: depth_objects``: no weights, torch on the node's device."""
    weights = str(p['instance.weights']).strip()
    if weights not in ('', 'DEFAULT', 'none'):
        raise ModelLoadError(f'instance.model {DEPTH_OBJECTS} uses no weights file; '
                             f'instance.weights is {weights!r}: leave it unset')
    if names(p['instance.class_names']) or p['instance.num_classes'] not in (0, 2):
        raise ModelLoadError(f'instance.model {DEPTH_OBJECTS} has one class, "object": leave '
                             'instance.class_names and instance.num_classes unset')
    if p['instance.backend'] not in ('auto', 'torch'):
        info(f'instance.backend {p["instance.backend"]}: {DEPTH_OBJECTS} is geometry in torch '
             'tensors (no network to compile); running torch')
    model = DepthObjectsModel(params_from(p)).to(device)  # (a buffer marks the device)
    loaded = LoadedModel(model=model, name=DEPTH_OBJECTS, class_names=list(CLASS_NAMES),
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         source='geometry of the registered depth image (no weights)')
    info(f'instance backend: torch ({DEPTH_OBJECTS} on {device})')
    return InstanceSegmenter(loaded, device, p.score_threshold, p.mask_threshold,
                             p['instance.max_detections'], p.classes, 'fp32')
