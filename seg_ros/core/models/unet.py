"""U-Net for semantic segmentation: segmentation_models_pytorch's Unet (an encoder-decoder
with skip connections), as a torchvision-style semantic model. No rclpy.

The architecture of ``semantic.model: unet`` is fixed so that a weights file names it
completely: ``smp.Unet(encoder_name='mobilenet_v2', decoder_channels=DECODER,
classes=num_classes)`` (3.9 M parameters with 11 classes; a CPU-sized U-Net). Its forward
takes a normalised (N, 3, H, W) batch of any size (padded to a multiple of 32, the
encoder's stride, and cropped back) and returns ``{'out': (N, C, H, W) logits}`` as
torchvision's segmentation models do, so the trainer, the backends (ONNX export, OpenVINO,
ONNX Runtime) and the node serve it like the others.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.core.config.names import UNET

NAME = UNET
ENCODER = 'mobilenet_v2'
DECODER = (128, 64, 32, 16, 16)
STRIDE = 32


class UNet(nn.Module):
    """segmentation_models_pytorch's Unet behind torchvision's ``{'out': logits}``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp  # imported with the model only
        self.net = smp.Unet(encoder_name=ENCODER, encoder_weights=None,
                            decoder_channels=DECODER, classes=num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return {'out': self.net(x)[..., :h, :w]}


def unet(weights: Any = None, num_classes: int = 21, weights_backbone: Any = None,
         **_: Any) -> UNet:
    """The registry's builder (torchvision's signature: no pretrained weights exist)."""
    if weights is not None or weights_backbone is not None:
        raise ValueError('no pretrained weights for unet: train it (train_camvid --model '
                         'unet) or give a weights file')
    return UNet(num_classes)
