"""A small ResNet as a slice encoder (`model.name=resnet18`): torchvision's ResNet-18 trunk, the second CNN that
the CNN recipe, GMML for the CNN (models/gmml_cnn.py) and the jigsaw can start from.

It keeps the MRNet-style CNN's contract (models/slice_classifier.py): `features`, an nn.Sequential from the slice to
its deepest map (what GMML masks and decodes and Grad-CAM reads), global max pooling to `embed_dim` = 512. The
stem shrinks with the image as that CNN's first layer does: ImageNet's 7x7/2 convolution and max pool from 128 px
up (output stride 32), a 3x3/1 convolution and max pool from 64 (16), the 3x3/1 convolution alone below (8, the
CIFAR stem), so that a 32 px region of interest still leaves a 4x4 map. Built at random init; pretrained weights
come from a GMML or jigsaw encoder file (`init=`), never from a download.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18


def _stem(in_chans: int, img_size: int) -> list[nn.Module]:
    if img_size >= 128:
        conv, pool = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False), True
    else:
        conv, pool = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False), img_size >= 64
    return [conv, nn.BatchNorm2d(64), nn.ReLU(inplace=True), *([nn.MaxPool2d(3, 2, 1)] if pool else [])]


class ResNet18Encoder(nn.Module):
    """ResNet-18 (torchvision's BasicBlocks, [2, 2, 2, 2]) on one slice -> (N, 512), global max pooled."""

    def __init__(self, in_chans: int = 1, img_size: int = 256):
        super().__init__()
        net = resnet18(weights=None)
        self.features = nn.Sequential(*_stem(in_chans, img_size), net.layer1, net.layer2, net.layer3, net.layer4)
        self.embed_dim, self.in_chans, self.img_size = 512, in_chans, img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(self.features(x), 1).flatten(1)

