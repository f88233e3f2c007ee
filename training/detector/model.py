"""The orchard detector's network: EfficientNet-Lite0's stride-8 and stride-16 features (or a tiny
random-init network for tests), a centre-heatmap head, and the wrapper ONNX exports."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.detector.config import STRIDE


def cbr(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Lite0Features(nn.Module):
    """EfficientNet-Lite0 (training/efficientnet_lite.py, ImageNet weights) up to ``_blocks.last``:
    the output of ``_blocks.s8_block`` (stride 8) and of ``_blocks.last`` (stride 16). Blocks before
    ``tune_from`` are frozen (their outputs are what the training caches); the rest train with
    BatchNorm statistics kept."""

    def __init__(self, s8_block: int = 4, last_block: int = 10, tune_from: int = 8, pretrained: bool = True, input_size: int = 256) -> None:
        super().__init__()
        from training.efficientnet_lite import efficientnet_lite0

        net = efficientnet_lite0(1000, input_size, pretrained=pretrained)
        if not s8_block < tune_from <= last_block + 1:
            raise ValueError(f"need s8_block < tune_from <= last_block + 1, got {s8_block}, {tune_from}, {last_block}")
        self.s8_block, self.tune_from = s8_block, tune_from
        self._conv_stem, self._bn0, self.act = net._conv_stem, net._bn0, net.act
        self._blocks = nn.ModuleList(net._blocks[: last_block + 1])
        self.c8 = LITE0_CHANNELS[s8_block]
        self.c16 = LITE0_CHANNELS[last_block]
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self._conv_stem, self._bn0, *self._blocks[: self.tune_from]]

    def frozen(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.act(self._bn0(self._conv_stem(x)))
        f8 = None
        for i, b in enumerate(self._blocks[: self.tune_from]):
            x = b(x)
            if i == self.s8_block:
                f8 = x
        return f8, x

    def trainable(self, f8: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for b in self._blocks[self.tune_from :]:
            x = b(x)
        return f8, x

    def train(self, mode: bool = True) -> "Lite0Features":
        super().train(False)  # BatchNorm statistics stay the pretrained ones (a light tuning)
        return self


#: output channels of each Lite0 block
LITE0_CHANNELS = [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]


class TinyFeatures(nn.Module):
    """A small random-init network, trained end to end (tests): stride-8 and stride-16 maps."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.s8 = nn.Sequential(
            cbr(3, w, 3), nn.MaxPool2d(2), cbr(w, w, 3), nn.MaxPool2d(2), cbr(w, 2 * w, 3), nn.MaxPool2d(2), cbr(2 * w, 2 * w, 3)
        )
        self.s16 = nn.Sequential(nn.MaxPool2d(2), cbr(2 * w, 4 * w, 3))
        self.c8, self.c16 = 2 * w, 4 * w

    def frozen(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,)

    def trainable(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.s8(x)
        return f8, self.s16(f8)


class CentreHead(nn.Module):
    def __init__(self, c8: int, c16: int, width: int, n_classes: int) -> None:
        super().__init__()
        self.lat8, self.lat16 = cbr(c8, width, 1), cbr(c16, width, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.trunk = nn.Sequential(cbr(width, width, 3), cbr(width, width, 3))
        self.heat = nn.Sequential(cbr(width, width, 3), nn.Conv2d(width, n_classes, 1))
        self.size = nn.Conv2d(width, 2, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heat[-1].bias, -2.19)  # prior 0.1: CenterNet's start

    def forward(self, f8: torch.Tensor, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.trunk(self.lat8(f8) + self.up(self.lat16(f16)))
        return self.heat(x), self.size(x), self.offset(x)


class CentreNet(nn.Module):
    """Features -> (heat logits, log box size in cells, offset). ``frozen`` / ``rest`` split the
    forward where the training caches."""

    def __init__(self, features: nn.Module, n_classes: int, width: int) -> None:
        super().__init__()
        self.features = features
        self.head = CentreHead(features.c8, features.c16, width, n_classes)

    def frozen(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.features.frozen(x)

    def rest(self, *cached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(*self.features.trainable(*cached))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.rest(*self.frozen(x))


class Exported(nn.Module):
    """What model.onnx holds: heatmap (sigmoid), size (network-input pixels), offset (cells)."""

    def __init__(self, net: CentreNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, off = self.net(x)
        return torch.sigmoid(heat), torch.exp(size) * STRIDE, off


def build_model(cfg: dict[str, Any], pretrained: bool = True) -> CentreNet:
    m = cfg["model"]
    n = len(cfg["data"]["classes"])
    if m["backbone"] == "efficientnet_lite0":
        feats: nn.Module = Lite0Features(
            int(m["s8_block"]), int(m["last_block"]), int(m["tune_from"]), pretrained, int(cfg["augment"]["tile"])
        )
    elif m["backbone"] == "tiny":
        feats = TinyFeatures(int(m.get("tiny_width", 16)))
    else:
        raise ValueError(f"model.backbone must be efficientnet_lite0 or tiny, got {m['backbone']!r}")
    return CentreNet(feats, n, int(m["width"]))
