"""YOLO segmentation files as the Ultralytics exporter writes them to ONNX. No rclpy, and
no Ultralytics (AGPL) at run time: the file is read with ``onnx``, run with ONNX Runtime
(or OpenVINO), and decoded here as Ultralytics documents it.

Two layouts, told apart by the file's metadata (``end2end``) and its first output's shape:

* **YOLOv8 / YOLO11** (``output0`` [1, 4 + nc + 32, anchors]): box centre x, y, width,
  height in input pixels, ``nc`` class scores, 32 mask coefficients per anchor. Score = the
  best class score; anchors scoring at least ``score_thresh`` go through class-aware NMS
  (``nms_iou``, 0.7 by default), at most ``max_det`` are kept, highest score first.
* **End-to-end** (``end2end: True``, ``output0`` [1, N, 6 + 32]: x1, y1, x2, y2, score,
  class, 32 coefficients): NMS is inside the graph; rows under ``score_thresh`` are dropped.

``output1`` [1, 32, H/4, W/4] holds the mask prototypes. The frame is letterboxed to the
export size (aspect kept, centred, grey 114 padding, as Ultralytics' LetterBox); a mask is
sigmoid(coefficients . prototypes), upsampled, with the padding cut away and resized to the
frame's own size, and zero outside its box; boxes have the letterbox undone and are clipped
to the frame; a detection whose mask is empty (no pixel above 0.5) is dropped, as
Ultralytics' predictor drops it. :class:`YoloSegModel` answers like torchvision's Mask
R-CNN (a list of ``boxes``, ``scores``, ``labels``, ``masks`` per image), so the instance
segmenter, ids, tracking and 3D serve it unchanged.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from seg_ros.core.models.registry import LoadedModel
from seg_ros.core.models.weights_io import ModelLoadError

NAME = 'yolo_seg'
PAD_VALUE = 114 / 255  # Ultralytics' letterbox grey
N_COEFFS = 32


def is_yolo_file(weights: str) -> bool:
    """Whether ``weights`` names an ONNX file (the YOLO segmentation path)."""
    return (weights or '').strip().lower().endswith('.onnx')


@dataclass(frozen=True)
class YoloFile:
    """What a YOLO segmentation ONNX says about itself."""

    path: Path
    names: list[str]
    imgsz: tuple[int, int]  # (height, width) of the export
    stride: int
    end2end: bool
    version: str


def _meta(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_yolo_file(path: str | Path) -> YoloFile:
    """Read and check a YOLO segmentation ONNX (graph and metadata, no weights run).

    Raises:
        ModelLoadError: not a file, not ONNX, not an Ultralytics segmentation export (the task
            it is for instead), or an input/output layout this loader cannot serve.
    """
    import onnx

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f'instance.weights {path}: no such file')
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - anything that is not an ONNX model
        raise ModelLoadError(f'instance.weights {p}: not an ONNX model ({type(exc).__name__}: '
                             f'{str(exc)[:120]})') from None
    meta = _meta(model)
    task = meta.get('task', '')
    if task != 'segment':
        what = {'detect': 'a detection export', 'classify': 'a classification export',
                'pose': 'a pose export', 'obb': 'an oriented-box export',
                'semantic': 'a semantic export'}.get(task, f'task {task!r}' if task else
                                                     'no Ultralytics task in its metadata')
        raise ModelLoadError(f'instance.weights {p}: {what}, not a YOLO segmentation export '
                             '(metadata task: segment)')
    inputs = [i for i in model.graph.input
              if i.name not in {init.name for init in model.graph.initializer}]
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 2:
        raise ModelLoadError(f'instance.weights {p}: expected one input and two outputs '
                             f'(detections, prototypes), found {len(inputs)} and '
                             f'{len(outputs)}')
    dims = [d.dim_value if d.HasField('dim_value') else d.dim_param
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, 'channels'):
        raise ModelLoadError(f'instance.weights {p}: input {inputs[0].name} has shape {dims}; '
                             'a YOLO segmentation export takes [1, 3, H, W]')
    if isinstance(dims[0], int) and dims[0] != 1:
        raise ModelLoadError(f'instance.weights {p}: exported with batch {dims[0]}; export '
                             'with batch=1 (or dynamic=True): frames are run one at a time')
    try:
        names_raw = ast.literal_eval(meta.get('names', '{}'))
        names = ([str(names_raw[k]) for k in sorted(names_raw)] if isinstance(names_raw, dict)
                 else [str(n) for n in names_raw])
        imgsz = ast.literal_eval(meta.get('imgsz', 'None'))
        if isinstance(imgsz, int):
            imgsz = [imgsz, imgsz]
        if imgsz is None and all(isinstance(d, int) and d > 0 for d in dims[2:]):
            imgsz = dims[2:]
        imgsz = (int(imgsz[0]), int(imgsz[1]))
        stride = int(meta.get('stride', 32))
    except Exception:  # noqa: BLE001
        raise ModelLoadError(f'instance.weights {p}: unreadable Ultralytics metadata (names, '
                             f'imgsz, stride): {sorted(meta)}') from None
    if not names:
        raise ModelLoadError(f'instance.weights {p}: no class names in its metadata')
    end2end = meta.get('end2end', 'False').strip().lower() == 'true'
    out0 = [d.dim_value if d.HasField('dim_value') else d.dim_param
            for d in outputs[0].type.tensor_type.shape.dim]
    if len(out0) != 3:
        raise ModelLoadError(f'instance.weights {p}: output {outputs[0].name} has shape {out0}; '
                             'expected [1, 4 + classes + 32, anchors] or [1, N, 6 + 32]')
    want = 6 + N_COEFFS if end2end else 4 + len(names) + N_COEFFS
    got = out0[2] if end2end else out0[1]
    if isinstance(got, int) and got != want:
        raise ModelLoadError(f'instance.weights {p}: output {outputs[0].name} {out0} does not '
                             f'fit {len(names)} classes and {N_COEFFS} mask coefficients '
                             f'({"[1, N, 38]" if end2end else f"[1, {want}, anchors]"})')
    return YoloFile(p, names, imgsz, stride, end2end, meta.get('version', '?'))


def letterbox_params(h: int, w: int, size: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """Ultralytics' LetterBox for a frame of ``h`` x ``w`` into ``size`` (height, width):
    (ratio, resized height, resized width, top, left).
    """
    r = min(size[0] / h, size[1] / w)
    nh, nw = max(round(h * r), 1), max(round(w * r), 1)
    dh, dw = (size[0] - nh) / 2, (size[1] - nw) / 2
    return r, nh, nw, round(dh - 0.1), round(dw - 0.1)


class YoloSegModel(torch.nn.Module):
    """A YOLO segmentation ONNX behind torchvision's Mask R-CNN interface (see the module).

    Args:
        info: from :func:`read_yolo_file`.
        backend: ``onnxruntime`` or ``openvino`` (both on the CPU; ONNX Runtime's CUDA
            provider when ``device`` is CUDA and onnxruntime-gpu is installed).
        device: where the outputs go (the segmenter's device).
        score_thresh, nms_iou, max_det: Ultralytics' conf, iou and max_det.
    """

    def __init__(self, info: YoloFile, backend: str, device: torch.device,
                 score_thresh: float = 0.25, nms_iou: float = 0.7, max_det: int = 100,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        self.info = info
        self.backend = backend
        self.device = torch.device(device)
        self.nms_iou = float(nms_iou)
        self.max_det = int(max_det)
        # the attribute the processor sets for every instance model
        self.roi_heads = SimpleNamespace(score_thresh=float(score_thresh))
        self._run = self._session(cache_dir)

    def _session(self, cache_dir: str | None):
        path = str(self.info.path)
        if self.backend == 'openvino':
            import openvino as ov
            core = ov.Core()
            if cache_dir:
                core.set_property({'CACHE_DIR': str(Path(cache_dir).expanduser()
                                                    / f'openvino-{ov.__version__}')})
            compiled = core.compile_model(path, 'CPU', {'PERFORMANCE_HINT': 'LATENCY'})
            half = compiled.inputs[0].get_element_type() == ov.Type.f16
            request = compiled.create_infer_request()

            def run(x):
                res = request.infer({0: x.astype(np.float16) if half else x})
                return [torch.from_numpy(np.array(res[i], dtype=np.float32)) for i in range(2)]
            return run
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list = ['CPUExecutionProvider']
        if self.device.type == 'cuda' and 'CUDAExecutionProvider' in \
                ort.get_available_providers():
            providers.insert(0, ('CUDAExecutionProvider', {'device_id': self.device.index or 0}))
        session = ort.InferenceSession(path, so, providers=providers)
        name = session.get_inputs()[0].name
        half = session.get_inputs()[0].type == 'tensor(float16)'  # a half=True export

        def run(x):
            outs = session.run(None, {name: x.astype(np.float16) if half else x})
            return [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in outs]
        return run

    @property
    def score_thresh(self) -> float:
        return float(self.roi_heads.score_thresh)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Each (3, H, W) float RGB [0, 1] image -> boxes (N, 4) xyxy in its pixels, scores,
        labels (class indices of :attr:`YoloFile.names`), masks (N, 1, H, W) probabilities.
        """
        return [self._one(im) for im in images]

    def _one(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        size = self.info.imgsz
        r, nh, nw, top, left = letterbox_params(h, w, size)
        x = image[None].float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode='bilinear', align_corners=False)
        canvas = torch.full((1, 3, size[0], size[1]), PAD_VALUE, dtype=torch.float32,
                            device=x.device)
        canvas[:, :, top:top + nh, left:left + nw] = x.clamp(0, 1)
        out0, protos = self._run(canvas.cpu().contiguous().numpy())
        pred, protos = out0[0].float(), protos[0].float()
        if self.info.end2end:
            keep = pred[:, 4] >= self.score_thresh
            pred = pred[keep]
            pred = pred[torch.argsort(pred[:, 4], descending=True)][:self.max_det]
            boxes, scores = pred[:, :4], pred[:, 4]
            labels, coeffs = pred[:, 5].round().long(), pred[:, 6:]
        else:
            nc = len(self.info.names)
            pred = pred.T  # (anchors, 4 + nc + 32)
            cls = pred[:, 4:4 + nc]
            scores, labels = cls.max(1)
            keep = scores >= self.score_thresh
            pred, scores, labels = pred[keep], scores[keep], labels[keep]
            cx, cy, bw, bh = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            kept = batched_nms(boxes, scores, labels, self.nms_iou)[:self.max_det]
            boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
            coeffs = pred[kept, 4 + nc:]
        # boxes back to the frame's pixels (the letterbox undone), clipped to it
        gain_x, gain_y = nw / w, nh / h
        boxes = boxes.clone()
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - left) / gain_x).clamp(0, w)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - top) / gain_y).clamp(0, h)
        masks = self._masks(coeffs, protos, boxes, (h, w), (nh, nw, top, left))
        if masks.shape[0]:  # as Ultralytics: a detection whose mask is empty is dropped
            has = masks.flatten(1).amax(1) > 0.5
            boxes, scores, labels, masks = boxes[has], scores[has], labels[has], masks[has]
        dev = self.device
        return {'boxes': boxes.to(dev), 'scores': scores.to(dev),
                'labels': labels.to(dev), 'masks': masks.to(dev)}

    def _masks(self, coeffs: torch.Tensor, protos: torch.Tensor, boxes: torch.Tensor,
               hw: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
        """(N, 1, H, W) mask probabilities at the frame's size, zero outside each box."""
        h, w = hw
        nh, nw, top, left = box
        n = coeffs.shape[0]
        if n == 0:
            return torch.zeros((0, 1, h, w))
        c, mh, mw = protos.shape
        logits = (coeffs @ protos.view(c, -1)).view(n, 1, mh, mw)
        size = self.info.imgsz
        logits = F.interpolate(logits, size=size, mode='bilinear', align_corners=False)
        logits = logits[:, :, top:top + nh, left:left + nw]
        logits = F.interpolate(logits, size=(h, w), mode='bilinear', align_corners=False)
        probs = logits.sigmoid_()
        cols = torch.arange(w, dtype=torch.float32)[None, None, None, :]
        rows = torch.arange(h, dtype=torch.float32)[None, None, :, None]
        b = boxes[:, :, None, None, None]
        probs *= (cols >= b[:, 0]) & (cols < b[:, 2])
        probs *= (rows >= b[:, 1]) & (rows < b[:, 3])
        return probs


def load_yolo_model(weights: str, backend: str, device: torch.device,
                    class_names: list[str] | tuple[str, ...] = (), num_classes: int = 0,
                    score_threshold: float = 0.25, max_detections: int = 100,
                    nms_iou: float = 0.7, cache_dir: str | None = None) -> LoadedModel:
    """A YOLO segmentation ONNX as a :class:`LoadedModel` (class names from the file).

    Raises:
        ModelLoadError: see :func:`read_yolo_file`; ``class_names`` or ``num_classes`` that
            contradict the file.
    """
    info = read_yolo_file(weights.strip())
    if class_names and list(class_names) != info.names:
        raise ModelLoadError(
            f'instance.class_names {list(class_names)[:6]}{"..." if len(class_names) > 6 else ""}'
            f' contradict {info.path.name}, whose {len(info.names)} classes are '
            f'{info.names[:6]}{"..." if len(info.names) > 6 else ""}: leave '
            'instance.class_names empty (the file names its classes)')
    if num_classes and num_classes != len(info.names):
        raise ModelLoadError(f'instance.num_classes {num_classes} contradicts '
                             f'{info.path.name}, which has {len(info.names)} classes: leave '
                             'it 0')
    model = YoloSegModel(info, backend, device, score_threshold, nms_iou, max_detections,
                         cache_dir)
    layout = 'end-to-end (NMS in the graph)' if info.end2end else 'YOLOv8/YOLO11 (NMS here)'
    return LoadedModel(model=model.eval(), name=NAME, class_names=list(info.names),
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                       source=f'YOLO segmentation ONNX {info.path} ({layout}, export '
                              f'{info.imgsz[1]}x{info.imgsz[0]}, Ultralytics {info.version}, '
                              f'{backend})')
