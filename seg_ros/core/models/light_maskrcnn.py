"""``maskrcnn_mobilenet_v3_large_fpn``: Mask R-CNN on a MobileNetV3-Large FPN. No rclpy.

Built from torchvision's parts the way ``fasterrcnn_mobilenet_v3_large_fpn`` builds its
backbone (the last two strided stages of MobileNetV3-Large into an FPN plus a max-pool
level; anchors 32-512 at three aspect ratios on every level), with a mask branch and
**slim heads**, because torchvision's standard heads (a 1024-wide box MLP on 256x7x7 ROIs,
four 256-channel mask convolutions) cost more than the whole backbone on a CPU:

* FPN of 128 channels (torchvision: 256);
* box head: a two-layer MLP of 256 (torchvision: 1024);
* mask head: two 3x3 convolutions of 128 channels (torchvision: four of 256);
* fewer proposals: 500 before and 150 after NMS at inference (torchvision: 1000 / 1000),
  128 sampled ROIs per image in training (torchvision: 512).

The backbone uses ``BatchNorm2d`` so it can learn from scratch; in eval mode it is the
same affine map as torchvision's frozen batch norm.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from seg_ros.core.config.names import LIGHT_MASKRCNN

NAME = LIGHT_MASKRCNN
FPN_CHANNELS = 128
BOX_WIDTH = 256
MASK_LAYERS = (128, 128)

#: Sampling and proposal counts of the slim model (any of them can be overridden).
DEFAULTS: dict[str, Any] = {
    'rpn_pre_nms_top_n_train': 1000, 'rpn_post_nms_top_n_train': 500,
    'rpn_pre_nms_top_n_test': 500, 'rpn_post_nms_top_n_test': 150,
    'rpn_batch_size_per_image': 128, 'box_batch_size_per_image': 128,
}


def maskrcnn_mobilenet_v3_large_fpn(*, weights: Any = None, num_classes: int | None = None,
                                    weights_backbone: Any = None, **kwargs: Any) -> MaskRCNN:
    """Build the light Mask R-CNN (random init; torchvision publishes no weights for it).

    Args:
        weights, weights_backbone: must be None (accepted for the registry's signature).
        num_classes: classes including the background (default 91, as torchvision).
        kwargs: MaskRCNN options (``min_size``, ``box_score_thresh``, ...).
    """
    if weights is not None or weights_backbone is not None:
        raise ValueError(f'torchvision has no pretrained weights for {NAME}')
    num_classes = num_classes or 91
    features = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, '_is_cn', False)] + [
        len(features) - 1]
    returned = stages[-2:]
    backbone = BackboneWithFPN(
        features, {str(k): str(v) for v, k in enumerate(returned)},
        [features[k].out_channels for k in returned], FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    options = dict(DEFAULTS)
    options.update(kwargs)
    return MaskRCNN(
        backbone, None, rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_WIDTH),
        box_predictor=FastRCNNPredictor(BOX_WIDTH, num_classes),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, list(MASK_LAYERS), 1),
        mask_predictor=MaskRCNNPredictor(MASK_LAYERS[-1], MASK_LAYERS[-1], num_classes),
        **options)


def trunk_from_lraspp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MobileNetV3-Large trunk of an LRASPP state dict (``backbone.N.*``) renamed to
    this model's keys (``backbone.body.N.*``): same layer shapes, so it can initialise the
    light model when no COCO weights are at hand.
    """
    return {'backbone.body.' + k[len('backbone.'):]: v for k, v in state.items()
            if k.startswith('backbone.')}
