"""Model registry: torchvision architectures, their weights, class names and preprocessing.

No rclpy here. A model is chosen by name; its weights come from one of

* ``DEFAULT``: torchvision's pretrained weights (fetched by torchvision into its cache on a
  connected machine; :class:`ModelLoadError` with a clear message when they cannot be had);
* ``camvid``: the semantic model shipped in this package (``seg_ros/weights/``), which
  also fixes the architecture, class names, colours and input size;
* ``tabletop``: the instance model shipped in this package (a self-describing file);
* a path to a state-dict file, loaded with ``torch.load(..., weights_only=True)``; a file
  written by ``train_instances`` describes itself (architecture, class names, training
  size, seg_ros version: :func:`save_instance_weights`), so it alone is enough;
* ``none``: random initialisation (tests and benchmarks only).

Preprocessing (mean/std, preferred input size) and class names travel with the weights, as
torchvision's weights enums carry ``transforms`` and ``meta["categories"]``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torchvision.models import detection, segmentation
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from seg_ros.core.config.names import (  # noqa: F401  (re-exported with the registry)
    DEFAULT_INSTANCE_MODEL,
    SHIPPED_INSTANCE,
    SHIPPED_SEMANTIC,
)
from seg_ros.core.models import light_maskrcnn, unet
from seg_ros.core.models.weights_io import (  # noqa: F401  (re-exported: one place to import from)
    INSTANCE_FORMAT,
    ModelLoadError,
    read_state_dict,
    read_weights_file,
    save_instance_weights,
)

#: proposals torchvision's Mask R-CNN builders keep after the RPN's NMS at inference
TORCHVISION_POST_NMS_TEST = 1000

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / 'weights'


@dataclass(frozen=True)
class ModelSpec:
    """One architecture of the registry."""

    builder: Callable[..., torch.nn.Module]
    weights_enum: Any  # torchvision WeightsEnum class (None: torchvision has no weights)
    kind: str  # 'semantic' | 'instance'


SEMANTIC_MODELS: dict[str, ModelSpec] = {
    'lraspp_mobilenet_v3_large': ModelSpec(
        segmentation.lraspp_mobilenet_v3_large,
        segmentation.LRASPP_MobileNet_V3_Large_Weights, 'semantic'),
    'deeplabv3_mobilenet_v3_large': ModelSpec(
        segmentation.deeplabv3_mobilenet_v3_large,
        segmentation.DeepLabV3_MobileNet_V3_Large_Weights, 'semantic'),
    'deeplabv3_resnet50': ModelSpec(
        segmentation.deeplabv3_resnet50, segmentation.DeepLabV3_ResNet50_Weights, 'semantic'),
    'deeplabv3_resnet101': ModelSpec(
        segmentation.deeplabv3_resnet101, segmentation.DeepLabV3_ResNet101_Weights, 'semantic'),
    'fcn_resnet50': ModelSpec(
        segmentation.fcn_resnet50, segmentation.FCN_ResNet50_Weights, 'semantic'),
    'fcn_resnet101': ModelSpec(
        segmentation.fcn_resnet101, segmentation.FCN_ResNet101_Weights, 'semantic'),
    unet.NAME: ModelSpec(unet.unet, None, 'semantic'),
}

INSTANCE_MODELS: dict[str, ModelSpec] = {
    'maskrcnn_resnet50_fpn': ModelSpec(
        detection.maskrcnn_resnet50_fpn, detection.MaskRCNN_ResNet50_FPN_Weights, 'instance'),
    'maskrcnn_resnet50_fpn_v2': ModelSpec(
        detection.maskrcnn_resnet50_fpn_v2, detection.MaskRCNN_ResNet50_FPN_V2_Weights,
        'instance'),
    light_maskrcnn.NAME: ModelSpec(
        light_maskrcnn.maskrcnn_mobilenet_v3_large_fpn, None, 'instance'),
}






@dataclass
class LoadedModel:
    """A ready model and what its weights say about it.

    Attributes:
        model: the torch module, in eval mode, on ``device``.
        name: registry name of the architecture.
        class_names: one name per output class (index -> name).
        mean, std: per-channel normalisation for RGB input in [0, 1].
        input_size: preferred shorter side for the model (0 = image's own resolution).
        train_size: shorter side the weights were trained at (0 = not recorded).
        palette: optional (num_classes, 3) uint8 RGB colours (None = generated palette).
        random_init: True when the weights are random (results are meaningless).
        source: human-readable description of where the weights came from.
        calibration: the int8 calibration set the weights carry (``camvid`` | ``tabletop``;
            '' = none: :mod:`seg_ros.core.models.quantize`).
    """

    model: torch.nn.Module
    name: str
    class_names: list[str]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 0
    train_size: int = 0
    palette: list[list[int]] | None = None
    random_init: bool = False
    source: str = ''
    calibration: str = ''

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.class_names)


def shipped_config_path(filename: str) -> Path:
    """Find a YAML of ``config/`` (installed share directory first, then the source tree).

    Raises:
        ModelLoadError: the file is in neither place.
    """
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('seg_ros')) / 'config' / filename)
    except Exception:  # not installed through ament (plain checkout, unit tests)
        pass
    candidates.append(Path(__file__).resolve().parents[3] / 'config' / filename)
    for c in candidates:
        if c.is_file():
            return c
    raise ModelLoadError(f'shipped model config {filename} not found in '
                         f'{[str(c) for c in candidates]}')


def default_class_names(n: int) -> list[str]:
    """Names for ``n`` unnamed classes: the decimal index, as Detection2D uses."""
    return [str(i) for i in range(n)]


def _check_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(c) for c in class_names]
    if names and len(names) != num_classes:
        raise ModelLoadError(
            f'class_names has {len(names)} entries but the model has {num_classes} classes')
    return names or default_class_names(num_classes)


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = ' '.join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise ModelLoadError(
            f'weights file {path} does not fit the model (wrong architecture or class '
            f'count?): {detail[:300]}') from None


def _state_num_classes(state: dict[str, torch.Tensor], kind: str) -> int | None:
    keys = {
        'semantic': ('classifier.high_classifier.weight', 'classifier.4.weight',
                     'net.segmentation_head.0.weight'),  # LRASPP, DeepLab/FCN, U-Net
        'instance': ('roi_heads.box_predictor.cls_score.weight',),
    }[kind]
    for k in keys:
        if k in state:
            return int(state[k].shape[0])
    return None


def load_semantic_model(name: str, weights: str, num_classes: int = 0,
                        class_names: Sequence[str] = (),
                        device: str | torch.device = 'cpu') -> LoadedModel:
    """Build a semantic segmentation model and load its weights.

    Args:
        name: a key of :data:`SEMANTIC_MODELS` (ignored for shipped weights, which fix it).
        weights: ``DEFAULT`` | a key of :data:`SHIPPED_SEMANTIC` | a file path | ``none``.
        num_classes: classes of a file or random model (0: taken from the file, else 21).
        class_names: optional names for a file or random model (len must equal classes).
        device: where the model lives.

    Returns:
        A :class:`LoadedModel` in eval mode whose forward maps a normalised float
        ``(N, 3, H, W)`` batch to ``{'out': (N, C, H, W) logits}``.

    Raises:
        ModelLoadError: unknown model, unreadable/mismatched weights, download failure.
    """
    cfg: dict[str, Any] | None = None
    shipped = SHIPPED_SEMANTIC.get(weights.lower()) if weights else None
    weights_path = weights
    if shipped is not None:  # the shipped config fixes model, classes, colours, input size
        with open(shipped_config_path(shipped['config']), encoding='utf-8') as f:
            cfg = yaml.safe_load(f)
        name = cfg['model']
        weights_path = str(WEIGHTS_DIR / shipped['file'])
        class_names = cfg['class_names']
        num_classes = len(class_names)
    spec = SEMANTIC_MODELS.get(name)
    if spec is None:
        raise ModelLoadError(
            f'unknown semantic model {name!r}; choose one of {sorted(SEMANTIC_MODELS)}')
    loaded = _build(spec, name, weights_path, num_classes, class_names, default_classes=21)
    if cfg is not None:
        loaded.palette = cfg.get('palette')
        loaded.input_size = int(cfg.get('input_size', 0))
        loaded.source = f'shipped weights {weights!r} ({weights_path})'
        loaded.calibration = weights.lower()
    loaded.model.to(device).eval()
    return loaded


class NativeSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, batch) without its resize: the model
    sees each image at its own size, capped to ``cap`` pixels on the longer side when
    ``cap`` > 0. Boxes and masks come back at the input's resolution either way.
    """

    def __init__(self, cap: int, image_mean, image_std, size_divisible: int = 32) -> None:
        super().__init__(max(cap, 1), max(cap, 1), image_mean, image_std, size_divisible)
        self.cap = int(cap)

    def resize(self, image: torch.Tensor, target: dict | None = None):
        h, w = image.shape[-2:]
        if self.cap <= 0 or max(h, w) <= self.cap:
            return image, target
        self.min_size = (max(1, round(min(h, w) * self.cap / max(h, w))),)
        return super().resize(image, target)


def instance_weights_path(weights: str) -> str:
    """The file ``instance.weights`` names: a shipped name's file, else the value."""
    shipped = SHIPPED_INSTANCE.get(weights.strip().lower())
    return str(WEIGHTS_DIR / shipped) if shipped else weights


def _instance_source(weights: str):
    """(weights path or keyword, state dict or None, description) of ``instance.weights``."""
    w = (weights or '').strip()
    if not w:
        raise ModelLoadError('weights must be DEFAULT, none, a shipped name '
                             f'({", ".join(SHIPPED_INSTANCE)}) or a file path')
    if w.upper() == 'DEFAULT' or w.lower() == 'none':
        return w, None, {}
    path = instance_weights_path(w)
    state, meta = read_weights_file(path)
    return path, state, meta


def load_instance_model(name: str, weights: str, num_classes: int = 0,
                        class_names: Sequence[str] = (),
                        device: str | torch.device = 'cpu',
                        min_size: int = 0, max_size: int = 0,
                        score_threshold: float = 0.05,
                        max_detections: int = 100,
                        max_proposals: int = 0) -> LoadedModel:
    """Build a Mask R-CNN model and load its weights.

    The model's own transform normalises and, when ``min_size`` > 0, resizes (shorter side
    ``min_size``, longer side at most ``max_size``, 0 = torchvision's 1333/800 ratio); with
    ``min_size`` 0 it sees the image at its own size (longer side capped to ``max_size``
    when > 0). Boxes and masks come back in input-image coordinates. ``score_threshold``
    and ``max_detections`` are applied inside the model's ROI heads (before the mask head),
    which gives the same instances above the threshold as filtering afterwards.
    ``max_proposals`` > 0 caps the RPN's proposals after NMS at inference (the ROI heads'
    work; 0 = the architecture's own count).

    ``name`` empty = the architecture the weights file names (``DEFAULT``, ``none`` and plain
    state dicts: :data:`DEFAULT_INSTANCE_MODEL`); a name that contradicts the file is
    refused. A self-describing file also brings its class names (unless ``class_names``
    are given) and training size.

    Raises:
        ModelLoadError: as :func:`load_semantic_model`.
    """
    path, state, meta = _instance_source(weights)
    shipped = (weights or '').strip().lower() in SHIPPED_INSTANCE
    file_model = meta.get('model')
    if file_model:
        if file_model not in INSTANCE_MODELS:
            raise ModelLoadError(
                f'weights file {path} holds a {file_model!r} model, which this seg_ros does '
                f'not know (it knows {sorted(INSTANCE_MODELS)})')
        if name and name != file_model:
            raise ModelLoadError(
                f'instance.model={name} contradicts weights file {path}, which holds a '
                f'{file_model} (leave instance.model empty to take the file\'s)')
        name = file_model
        class_names = list(class_names) or list(meta['class_names'])
    name = name or DEFAULT_INSTANCE_MODEL
    spec = INSTANCE_MODELS.get(name)
    if spec is None:
        raise ModelLoadError(
            f'unknown instance model {name!r}; choose one of {sorted(INSTANCE_MODELS)}')
    if spec.weights_enum is None and path.upper() == 'DEFAULT':
        raise ModelLoadError(
            f'torchvision publishes no weights for {name}: use instance.weights:=tabletop '
            '(shipped), a file written by train_instances, or none')
    size_kw: dict[str, Any] = {'min_size': min_size or 800,
                               'max_size': max_size or round((min_size or 800) * 1333 / 800)}
    if max_proposals > 0:  # proposals kept per image after the RPN's NMS: at most the
        # architecture's own (torchvision's 1000; the light model's 150), through its builder
        own = (light_maskrcnn.DEFAULTS['rpn_post_nms_top_n_test']
               if name == light_maskrcnn.NAME else TORCHVISION_POST_NMS_TEST)
        size_kw['rpn_post_nms_top_n_test'] = min(own, max_proposals)
    loaded = _build(spec, name, path, num_classes, class_names, default_classes=91,
                    state=state, **size_kw, box_score_thresh=score_threshold,
                    box_detections_per_img=max_detections)
    if not min_size:
        t = loaded.model.transform
        loaded.model.transform = NativeSizeTransform(max_size, t.image_mean, t.image_std,
                                                     t.size_divisible)
    loaded.train_size = int(meta.get('train_size', 0) or 0)
    if shipped:
        loaded.source = f'shipped weights {weights.strip()!r} ({path})'
        loaded.calibration = weights.strip().lower()
    elif meta:
        loaded.source += (f' (seg_ros {meta.get("seg_ros_version", "?")} training, '
                          f'{loaded.num_classes - 1} classes)')
    loaded.model.to(device).eval()
    return loaded


def _build(spec: ModelSpec, name: str, weights: str, num_classes: int,
           class_names: Sequence[str], default_classes: int,
           state: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> LoadedModel:
    weights = (weights or '').strip()
    if not weights:
        raise ModelLoadError('weights must be DEFAULT, none, a shipped name or a file path')
    no_backbone = {'weights_backbone': None}
    if weights.upper() == 'DEFAULT' and spec.weights_enum is None:
        raise ModelLoadError(f'torchvision publishes no weights for {name}: give a weights '
                             'file (train_camvid --model unet writes one) or none')
    if weights.upper() == 'DEFAULT':
        tv_weights = spec.weights_enum.DEFAULT
        try:
            model = spec.builder(weights=tv_weights, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f'cannot get torchvision pretrained weights {tv_weights} for {name} '
                f'({type(exc).__name__}: {str(exc)[:200]}); on an offline machine use a '
                f'weights file, a shipped model or none') from None
        names = list(tv_weights.meta['categories'])
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        input_size = 0
        try:
            t = tv_weights.transforms()
            mean, std = tuple(t.mean), tuple(t.std)
            rs = getattr(t, 'resize_size', None)
            input_size = int(rs[0]) if rs else 0
        except Exception:  # detection weights: the model normalises itself
            pass
        return LoadedModel(model, name, names, mean, std, input_size,
                           source=f'torchvision {tv_weights}')
    if weights.lower() == 'none':
        n = num_classes or (len(class_names) if class_names else default_classes)
        model = spec.builder(weights=None, num_classes=n, **no_backbone, **kwargs)
        return LoadedModel(model, name, _check_names(class_names, n), random_init=True,
                           source='random initialisation (weights=none)')
    if state is None:
        state = read_state_dict(weights)
    file_classes = _state_num_classes(state, spec.kind)
    if num_classes and file_classes and num_classes != file_classes:
        raise ModelLoadError(
            f'num_classes={num_classes} but weights file {weights} has {file_classes} classes')
    n = num_classes or file_classes or (len(class_names) if class_names else default_classes)
    extra_kw: dict[str, Any] = {}
    if spec.kind == 'semantic' and any(k.startswith('aux_classifier.') for k in state):
        extra_kw['aux_loss'] = True
    try:
        model = spec.builder(weights=None, num_classes=n, **no_backbone, **extra_kw, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f'cannot build {name}: {exc}') from None
    _load_into(model, state, weights)
    return LoadedModel(model, name, _check_names(class_names, n),
                       source=f'weights file {weights}')
