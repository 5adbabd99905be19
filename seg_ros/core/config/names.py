"""The names the parameter table offers, without importing torch: model architectures,
shipped weights, backends, the export cache. No rclpy, no torch.

The registry (:mod:`seg_ros.core.models.registry`) and the backends
(:mod:`seg_ros.core.models.backends`) are built on these names, and
``test/unit/test_params.py`` checks that they agree, so a params file can be read and
validated (``segment_bag``'s refusals, the docs) without loading torch.
"""
from __future__ import annotations

#: semantic architectures of torchvision, by registry name
SEMANTIC_MODEL_NAMES = (
    'lraspp_mobilenet_v3_large',
    'deeplabv3_mobilenet_v3_large',
    'deeplabv3_resnet50',
    'deeplabv3_resnet101',
    'fcn_resnet50',
    'fcn_resnet101',
    'unet',
)

#: the U-Net of :mod:`seg_ros.core.models.unet` (segmentation_models_pytorch)
UNET = 'unet'

#: the light Mask R-CNN of :mod:`seg_ros.core.models.light_maskrcnn`
LIGHT_MASKRCNN = 'maskrcnn_mobilenet_v3_large_fpn'

#: YOLO segmentation ONNX files (Ultralytics exports; :mod:`seg_ros.core.models.yolo_seg`)
YOLO_SEG = 'yolo_seg'

#: class-agnostic objects from the registered depth image, no weights
#: (:mod:`seg_ros.core.spatial.depth_objects`)
DEPTH_OBJECTS = 'depth_objects'

#: instance architectures of the torch registry, by name
MASKRCNN_NAMES = ('maskrcnn_resnet50_fpn', 'maskrcnn_resnet50_fpn_v2', LIGHT_MASKRCNN)

#: every ``instance.model`` value
INSTANCE_MODEL_NAMES = (*MASKRCNN_NAMES, YOLO_SEG, DEPTH_OBJECTS)

#: The instance architecture of ``DEFAULT``, ``none`` and plain state-dict files when
#: ``instance.model`` is empty (a self-describing file names its own).
DEFAULT_INSTANCE_MODEL = 'maskrcnn_resnet50_fpn_v2'

#: Bundled instance weights selectable by name (``instance.weights:=tabletop``); the file
#: describes itself (architecture, classes, training size).
SHIPPED_INSTANCE = {'tabletop': 'tabletop_maskrcnn_mobilenet_v3.pt'}

#: Bundled semantic weights selectable by name (``semantic.weights:=camvid``).
SHIPPED_SEMANTIC = {
    'camvid': {'file': 'camvid_lraspp.pt', 'config': 'camvid.yaml'},
}

#: ``backend`` / ``instance.backend`` values
BACKENDS = ('torch', 'openvino', 'onnxruntime', 'auto')

#: where exported graphs are cached (``backend.cache_dir``)
DEFAULT_CACHE_DIR = '~/.cache/seg_ros'
