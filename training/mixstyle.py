"""MixStyle (Zhou et al., "Domain generalization with MixStyle", ICLR 2021) for training only.

Each capture session or photo source has its own camera, light and variety, and early CNN feature
maps carry that look in their per-channel means and spreads (their "style"). During training, a
share of the batches get, after each named block, every crop's feature statistics mixed with those
of another crop of the batch (a random partner; most partners come from another session):

    x' = (x - mu(x)) / sigma(x) * (lam * sigma(x) + (1 - lam) * sigma(x[perm])) + (lam * mu(x) + (1 - lam) * mu(x[perm]))

with lam ~ Beta(alpha, alpha) per crop. The network then has to judge the fruit from what is left
when the style is not the crop's own. It is a forward hook: at evaluation it does nothing, it adds
no weights, and it is removed before export, so the served graph is the plain network.

Config (``model.mixstyle``; null or absent: off)::

    mixstyle: {p: 0.5, alpha: 0.1, layers: [features.1, features.2, features.3]}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DEFAULTS = {"p": 0.5, "alpha": 0.1, "eps": 1e-6}


def mix_styles(x: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """``x`` (B, C, H, W) with each sample's channel means and spreads mixed with a random partner's."""
    b = x.size(0)
    if b < 2:
        return x
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((b, 1, 1, 1)).to(x)  # x's dtype and device (a GPU under torchrun)
    perm = torch.randperm(b)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


def attach(model: nn.Module, cfg: dict[str, Any] | None) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks MixStyle onto the named modules of ``model`` per ``cfg`` (see the module docstring);
    the handles, to remove before export. No hooks when ``cfg`` is falsy."""
    if not cfg:
        return []
    unknown = sorted(set(cfg) - {"p", "alpha", "eps", "layers"})
    if unknown:
        raise ValueError(f"model.mixstyle: unknown keys {unknown} (p, alpha, eps, layers)")
    p = float(cfg.get("p", DEFAULTS["p"]))
    alpha = float(cfg.get("alpha", DEFAULTS["alpha"]))
    eps = float(cfg.get("eps", DEFAULTS["eps"]))
    if not 0.0 < p <= 1.0 or not alpha > 0:
        raise ValueError(f"model.mixstyle: p must be in (0, 1] and alpha > 0, got p={p}, alpha={alpha}")
    modules = dict(model.named_modules())
    layers = list(cfg.get("layers") or [])
    missing = [name for name in layers if name not in modules]
    if not layers or missing:
        raise ValueError(
            f"model.mixstyle.layers must name modules of the network, got {layers} ({', '.join(missing) or 'none given'}; e.g. features.1)"
        )

    names = {id(modules[name]): name for name in layers}

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None  # the output as it is
        if not isinstance(output, torch.Tensor) or output.dim() != 4:  # fails on the first batch, not silently never mixing
            raise ValueError(
                f"model.mixstyle: layer {names[id(module)]} gives no (batch, channels, height, width) feature map "
                "to mix; name a convolutional block, e.g. features.1"
            )
        if float(torch.rand(())) >= p:
            return None
        return mix_styles(output, alpha, eps)

    return [modules[name].register_forward_hook(hook) for name in layers]
