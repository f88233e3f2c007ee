"""Which weights train when: the recipe for a pretrained backbone.

``train.probe_epochs`` (default 0): the first epochs train the classifier head alone (a linear probe
on the pretrained features, every other layer frozen and its BatchNorm statistics kept), so a random
head's first, large gradients never reach the pretrained weights.

``train.trainable_from`` (default null: everything trains): after the probe, the parameters from the
first one whose name starts with this prefix to the end train (e.g. ``_blocks.8``: the last half of
EfficientNet-Lite0's blocks, its head conv and the classifier); everything before stays frozen, its
BatchNorm in eval mode.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def head_prefix(model: nn.Module) -> str:
    """The name of the model's last Linear layer: its classifier head."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("the model has no Linear layer to probe")
    return names[-1]


def trainable_names(model: nn.Module, trainable_from: str | None) -> set[str]:
    """Parameter names that fine-tune: all of them, or from the first named ``trainable_from...`` on."""
    names = [n for n, _ in model.named_parameters()]
    if trainable_from is None:
        return set(names)
    prefix = trainable_from.rstrip(".")
    first = next((i for i, n in enumerate(names) if n == prefix or n.startswith(prefix + ".")), None)
    if first is None:
        blocks = sorted({n.rsplit(".", 2)[0] for n in names})
        raise ValueError(
            f"train.trainable_from {trainable_from!r} names no parameter of the model (some of its modules: {', '.join(blocks[:12])} ...)"
        )
    return set(names[first:])


class Phases:
    """Sets ``requires_grad`` and BatchNorm modes for each epoch of a probe-then-fine-tune recipe."""

    def __init__(self, model: nn.Module, cfg: dict[str, Any]) -> None:
        tr = cfg["train"]
        self.model = model
        self.probe_epochs = int(tr.get("probe_epochs", 0) or 0)
        if self.probe_epochs < 0:
            raise ValueError(f"train.probe_epochs must be >= 0, got {self.probe_epochs}")
        head = head_prefix(model)
        self.head = {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
        self.finetune = trainable_names(model, tr.get("trainable_from"))
        #: whether some epoch trains only part of the network
        self.frozen_ever = self.probe_epochs > 0 or tr.get("trainable_from") is not None

    def trainable(self, epoch: int) -> set[str]:
        return self.head if epoch < self.probe_epochs else self.finetune

    def apply(self, epoch: int) -> str:
        """Freeze what ``epoch`` (0-based) does not train; call after ``model.train()``. Returns the phase."""
        live = self.trainable(epoch)
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in live)
        for m in self.model.modules():
            own = list(m.parameters(recurse=False))
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and own and not any(p.requires_grad for p in own):
                m.eval()  # frozen BatchNorm keeps its pretrained statistics
        return "probe" if epoch < self.probe_epochs else "fine-tune"

    def record(self) -> dict[str, Any]:
        names = [n for n, _ in self.model.named_parameters()]
        first = next((n for n in names if n in self.finetune), None)
        return {
            "probe_epochs": self.probe_epochs,
            "trainable_from": first,
            "trainable_parameters": int(sum(p.numel() for n, p in self.model.named_parameters() if n in self.finetune)),
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
        }
