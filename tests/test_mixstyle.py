"""MixStyle (training/mixstyle.py): mixes feature statistics between crops in training only, adds no
weights, and leaves the exported graph the plain network."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grader.defect import parity_probe  # noqa: E402
from training import mixstyle  # noqa: E402
from training.models_registry import build_model  # noqa: E402

CFG = {"p": 1.0, "alpha": 0.1, "layers": ["features.1", "features.3"]}


def test_mixed_features_take_a_partners_statistics_and_keep_their_shape():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 6, 6) * torch.arange(1, 9).view(8, 1, 1, 1) + torch.arange(8).view(8, 1, 1, 1) * 10
    y = mixstyle.mix_styles(x, alpha=0.1)
    assert y.shape == x.shape and not torch.allclose(x, y)
    # the normalised pattern of each crop is kept: only its per-channel mean and spread change
    norm = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(norm(x), norm(y), atol=1e-4)
    # every new mean lies between the crop's own and some other crop's
    mu_x, mu_y = x.mean(dim=(2, 3)), y.mean(dim=(2, 3))
    assert bool(((mu_y >= mu_x.min(dim=0).values - 1e-4) & (mu_y <= mu_x.max(dim=0).values + 1e-4)).all())
    assert torch.equal(mixstyle.mix_styles(x[:1], 0.1), x[:1])  # a lone crop has no partner


def test_hooks_act_in_training_only_and_come_off_before_export():
    model = build_model("mobilenet_v3_small", 2)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(6, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        plain = model(x)
    handles = mixstyle.attach(model, CFG)
    assert len(handles) == 2 and sum(p.numel() for p in model.parameters()) == n_params  # no weights added
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # evaluation: nothing mixed
        model.train()
        torch.manual_seed(1)
        mixed_a = model(x)
        torch.manual_seed(1)
        mixed_b = model(x)
        model.eval()
    assert torch.equal(mixed_a, mixed_b)  # seeded runs mix alike
    for h in handles:
        h.remove()
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        assert not torch.equal(model(x), mixed_a)  # hooks gone: the plain network in training too


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"layers": ["features.99"]}, "must name modules"),
        ({"layers": []}, "must name modules"),
        ({"p": 0, "layers": ["features.1"]}, "p must be in"),
        ({"alpha": -1, "layers": ["features.1"]}, "alpha > 0"),
        ({"beta": 1, "layers": ["features.1"]}, "unknown keys"),
    ],
)
def test_bad_settings_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        mixstyle.attach(build_model("mobilenet_v3_small", 2), cfg)
    assert mixstyle.attach(build_model("mobilenet_v3_small", 2), None) == []


def test_a_layer_without_a_feature_map_is_refused_on_the_first_batch():
    model = build_model("mobilenet_v3_small", 2)
    mixstyle.attach(model, {"p": 1.0, "layers": ["classifier"]})
    model.train()
    with pytest.raises(ValueError, match="layer classifier gives no"):
        model(torch.randn(4, 3, 64, 64))


@pytest.mark.slow
def test_a_model_trained_with_mixstyle_exports_the_plain_network(tmp_path):
    from training import train
    from training.config import DEFAULT_CONFIG, load_config

    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "data.kind=synthetic",
            "data.n=48",
            "data.cache_size=96",
            "train.epochs=1",
            "train.batch_size=16",
            "model.arch=small_fruitnet",
            "model.input_size=64",
            "model.test_time_views=1",
            "name=tiny-mixstyle",
            "version=0.0.1",
            "model.mixstyle={p: 1.0, alpha: 0.1, layers: [features.0, features.1]}",
        ],
    )
    meta = train.run(cfg, tmp_path / "art", tmp_path / "work")  # export is checked against torch inside
    assert meta["config"]["model"]["mixstyle"]["layers"] == ["features.0", "features.1"]
    # the selected weights fit the plain network, and the plain network computes the recorded parity logits
    plain = build_model("small_fruitnet", 2)
    plain.load_state_dict(torch.load(tmp_path / "work" / "best.pt", weights_only=True))
    plain.eval()
    with torch.no_grad():
        logits = plain(torch.from_numpy(parity_probe((64, 64)))).numpy()
    assert np.allclose(logits, np.asarray(meta["parity"]["logits"]), atol=1e-5)
