"""Architectures a defect model can be trained with. All built with weights=None: nothing is
downloaded; every model trains from scratch."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torchvision


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
        stem = [] if stem_stride == 1 else [nn.Conv2d(3, w, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*stem, block(3 if stem_stride == 1 else w, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 8 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


REGISTRY: dict[str, Callable[[int], nn.Module]] = {
    "small_fruitnet": lambda n: SmallFruitNet(num_classes=n),
    # half the width and a strided stem: about 1/16 of small_fruitnet's multiply-adds
    "small_fruitnet_lite": lambda n: SmallFruitNet(num_classes=n, width=16, stem_stride=2),
    "mobilenet_v3_small": lambda n: torchvision.models.mobilenet_v3_small(weights=None, num_classes=n),
    "mobilenet_v3_large": lambda n: torchvision.models.mobilenet_v3_large(weights=None, num_classes=n),
    "efficientnet_b0": lambda n: torchvision.models.efficientnet_b0(weights=None, num_classes=n),
    "resnet18": lambda n: torchvision.models.resnet18(weights=None, num_classes=n),
}


def build_model(arch: str, num_classes: int) -> nn.Module:
    try:
        return REGISTRY[arch](num_classes)
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(REGISTRY)}") from None
