"""The linear probe's cross-session fit (train.probe_fit: cross_session): which sessions are held out
together, that every held-out logit comes from a head that never saw its session, and the threshold
rule that reads those folds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from training import probe  # noqa: E402
from training.calibrate import pick_threshold_by_group  # noqa: E402
from training.metrics import auc  # noqa: E402


def _sessions(rng, offsets: dict[str, tuple[int, float]], n: int = 40, dim: int = 8):
    """Features where the class moves dimension 0 and each session shifts every dimension by its own
    offset (the session look a model must not learn)."""
    xs, ys, gs = [], [], []
    for name, (label, shift) in offsets.items():
        labels = np.full(n, label) if label >= 0 else rng.integers(0, 2, n)
        x = rng.normal(0, 1, (n, dim)) + shift
        x[:, 0] += 2.5 * labels
        xs.append(x)
        ys.append(labels)
        gs += [name] * n
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(int), gs


def test_folds_pair_one_class_sessions_and_hold_mixed_ones_alone():
    y = np.array([0, 0, 1, 1, 0, 1, 0])
    g = ["s1", "s1", "d1", "d1", "m", "m", "s2"]
    assert probe.session_folds(y, g) == [["s1", "d1"], ["s2", "d1"], ["m"]]
    assert probe.session_folds(np.array([0, 0]), ["a", "b"]) == []  # no defective session: no fold


def test_cross_session_logits_come_from_heads_that_never_saw_the_session():
    rng = np.random.default_rng(0)
    x, y, g = _sessions(rng, {"s1": (0, 0.0), "s2": (0, 0.7), "d1": (1, -0.4), "d2": (1, 0.3), "m": (-1, 0.2)})
    got = probe.run_cross_session(x, y, y > 0, g, [1.0, 100.0], 2, None, lambda yy, z: auc(yy, z[:, 1] - z[:, 0]))
    folds = got["history"][-1]["folds"]
    assert folds == ["s1+d1", "s1+d2", "s2+d1", "s2+d2", "m"]
    # each fold's logits equal those of a head fitted on the other sessions only
    chosen = got["l2"]
    g_arr = np.array(g)
    start = 0
    for fold in folds:
        held = np.isin(g_arr, fold.split("+"))
        w, b = probe.fit_softmax(x[~held], y[~held], 2, chosen, probe.sample_weights(y[~held], list(g_arr[~held]), None))
        n = int(held.sum())
        np.testing.assert_allclose(got["oof_logits"][start : start + n], x[held] @ w.T + b, rtol=1e-4, atol=1e-4)
        assert list(got["oof_labels"][start : start + n]) == list(y[held]) and set(got["oof_groups"][start : start + n]) == {fold}
        start += n
    assert start == len(got["oof_logits"])
    # the head kept is fitted on everything, and it separates the classes
    full = x @ got["w"].T + got["b"]
    assert auc(y, full[:, 1] - full[:, 0]) > 0.9
    with pytest.raises(ValueError, match="both classes"):
        probe.run_cross_session(x[y == 0], y[y == 0], y[y == 0] > 0, list(g_arr[y == 0]), [1.0], 2, None, lambda yy, z: 0.0)


def test_copies_join_only_the_fits_whose_held_out_sessions_neither_lent_nor_own_them():
    rng = np.random.default_rng(1)
    x, y, g = _sessions(rng, {"s1": (0, 0.0), "s2": (0, 0.7), "d1": (1, -0.4), "m": (-1, 0.2)})
    g_arr = np.array(g)
    # one copy per crop in the colour of another session (here: the features shifted), labelled as its crop
    donors = [{"s1": "d1", "s2": "m", "d1": "s2", "m": "s1"}[s] for s in g]
    cp = probe.Copies(x + 0.3, y.copy(), list(g), donors)
    score = lambda yy, z: auc(yy, z[:, 1] - z[:, 0])  # noqa: E731
    got = probe.run_cross_session(x, y, y > 0, g, [10.0], 2, None, score, cp)
    start = 0
    for fold in got["history"][-1]["folds"]:
        held = np.isin(g_arr, fold.split("+"))
        extra = cp.outside(fold.split("+"))
        # no copy of a held-out crop, nor one in a held-out session's colour
        assert not np.isin(g_arr[extra], fold.split("+")).any() and not np.isin(np.array(donors)[extra], fold.split("+")).any()
        xx, yy = np.concatenate([x[~held], cp.feats[extra]]), np.concatenate([y[~held], y[extra]])
        w, b = probe.fit_softmax(xx, yy, 2, 10.0, probe.sample_weights(yy, list(g_arr[~held]) + list(g_arr[extra]), None))
        n = int(held.sum())
        np.testing.assert_allclose(got["oof_logits"][start : start + n], x[held] @ w.T + b, rtol=1e-4, atol=1e-4)
        start += n
    # the head kept learns from every crop and every copy
    xx, yy = np.concatenate([x, cp.feats]), np.concatenate([y, y])
    w, b = probe.fit_softmax(xx, yy, 2, 10.0, probe.sample_weights(yy, g + g, None))
    np.testing.assert_allclose(got["w"], w, rtol=1e-4, atol=1e-4)


def test_mean_rule_serves_the_folds_on_average_and_the_worst_rule_the_worst_fold():
    # fold a separates at 0.3, fold b at 0.7: the mean rule takes a threshold between, the worst rule
    # the one that keeps the worse fold best
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.4, 0.5, 0.55, 0.6, 0.8, 0.9, 0.95, 0.97])
    g = ["a"] * 4 + ["b"] * 6
    t_mean = pick_threshold_by_group(y, s, g, worst=False)
    assert 0.55 < t_mean <= 0.8
    t_worst = pick_threshold_by_group(y, s, g)
    assert 0.55 < t_worst <= 0.8


def test_temperature_and_bias_recover_the_scores_they_were_drawn_from():
    from training.metrics import fit_temperature_and_bias

    rng = np.random.default_rng(3)
    d = rng.normal(0, 3, 40000)
    y = (rng.random(len(d)) < 1 / (1 + np.exp(-(d + 1.5) / 2.0))).astype(int)
    t, shift = fit_temperature_and_bias(d, y, balanced=False)
    assert t == pytest.approx(2.0, rel=0.05) and shift == pytest.approx(1.5, abs=0.15)
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature_and_bias(d, np.zeros_like(y))
    # logits that barely differ (a degenerate head): no temperature that blows their noise up
    with pytest.raises(ValueError, match="outside"):
        fit_temperature_and_bias(1e-7 * (2 * y - 1) + 1e-8 * rng.normal(size=len(y)), y)


def test_calibrate_shifts_the_defective_logit_and_the_head_takes_the_shift():
    from pathlib import Path

    import torch
    from torch import nn

    from training import train
    from training.calibrate import calibrate, shift_head_bias
    from training.config import load_config
    from training.metrics import expected_calibration_error

    cfg = load_config(Path(train.__file__).parent / "configs" / "apple_defect_lite0.yaml")
    assert cfg["calibration"]["method"] == "temperature_and_bias"
    rng = np.random.default_rng(4)

    def split(n: int, offset: float):
        # scores that read "defective" too eagerly: the true log-odds are the margin minus 2
        margin = rng.normal(0, 2, n) + offset
        y = (rng.random(n) < 1 / (1 + np.exp(-(margin - 2.0)))).astype(int)
        return np.stack([np.zeros(n), margin], axis=1).astype(np.float32), y

    (zv, yv), (zt, yt) = split(4000, 2.0), split(4000, 2.0)
    sess = {"val": ["a"] * 2000 + ["b"] * 2000, "test": ["t"] * 4000}
    cal = calibrate(cfg, {"val": zv, "test": zt}, {"val": yv, "test": yt}, sess)
    assert cal["method"] == "temperature_and_bias" and cal["logit_shift"] == pytest.approx(-2.0, abs=0.3)
    ece_t = calibrate({**cfg, "calibration": {"method": "temperature"}}, {"val": zv, "test": zt}, {"val": yv, "test": yt}, sess)
    assert cal["metrics"]["test"]["ece_after"] < 0.03 < ece_t["metrics"]["test"]["ece_after"]
    # ranking and decisions unchanged: the threshold moves with the scores
    assert cal["metrics"]["test"]["auc"] == pytest.approx(ece_t["metrics"]["test"]["auc"])
    assert cal["metrics"]["test"]["ece_before"] == pytest.approx(expected_calibration_error(yt, 1 / (1 + np.exp(-zt[:, 1]))))
    # a val of one class: a temperature alone
    one = calibrate(
        cfg, {"val": zv[yv == 1], "test": zt}, {"val": yv[yv == 1], "test": yt}, {"val": ["a"] * int(yv.sum()), "test": sess["test"]}
    )
    assert one["method"] == "temperature" and one["logit_shift"] == 0.0
    # the shift goes into the classifier head's bias, on the defective class only
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    before = net(x).detach()
    shift_head_bias(net, 1, -2.0)
    after = net(x).detach()
    torch.testing.assert_close(after[:, 0], before[:, 0])
    torch.testing.assert_close(after[:, 1], before[:, 1] - 2.0)


@pytest.mark.slow
def test_cross_session_recipe_trains_calibrates_on_held_out_folds_and_exports(tmp_path):
    import json
    from pathlib import Path

    from training import train
    from training.config import load_config

    cfg = load_config(
        Path(train.__file__).parent / "configs" / "apple_defect_lite0.yaml",
        [
            "data.kind=synthetic",
            "data.n=32",
            "data.cache_size=96",
            "model.input_size=64",
            "fruit_check=null",
            "train.probe_l2=[1.0, 30.0]",
            "train.num_threads=1",
            "name=probe-test",
            "version=0.0.1",
        ],
    )
    assert cfg["train"]["probe_fit"] == "cross_session" and cfg["thresholds"]["rule"] == "balanced_mean_over_groups"
    meta = train.run(cfg, tmp_path / "art", tmp_path / "work")
    m = json.loads((tmp_path / "art" / "metadata.json").read_text())
    assert m["thresholds"]["chosen_on"].startswith("held-out sessions") and "mean per-session" in m["thresholds"]["rule"]
    # the val figures are the held-out folds' (synthetic sessions "train" and "val" each hold both classes)
    assert set(m["metrics"]["val"]["per_session"]) == {"train", "val"}
    assert m["history"][-1]["chosen_l2"] in (1.0, 30.0) and m["metrics"]["onnx_check"]["max_abs_diff_scores"] < 1e-4
    # the recipe's crops are colour-normalised and its calibration shifts the defective logit inside the
    # graph (or, on folds that cannot carry it, falls back to a temperature alone)
    assert m["preprocessing"]["colour_normalise"]["method"] == "reinhard-lab"
    assert ("defective_logit_shift" in m["calibration"]) == m["calibration"]["method"].startswith("temperature and a shift")
    assert meta["metrics"]["test"]["n"] > 0
