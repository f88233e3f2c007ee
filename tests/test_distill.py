"""Distillation (training/distill.py) on a few tiny synthetic crops with a tiny teacher: the views the
teacher and the student share, the loss, a few steps that lower it, the threshold rule, the export
and the CPU timing. No real data."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from datasets.synthetic import random_fruit_image  # noqa: E402
from training import distill, distill_crops  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.models_registry import build_model  # noqa: E402

SIZE = 32


def _crops(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, SIZE, SIZE) float32 crops normalised as the teacher's, and their labels."""
    imgs, ys = zip(*(random_fruit_image(i, size_px=SIZE) for i in range(n)))
    x = (np.stack(imgs).astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x), np.array(ys, dtype=int)


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    ).eval()


def _run(model: torch.nn.Module):
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    return run


def test_views_are_the_eight_symmetries_of_the_square():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = [distill.dihedral(x, k) for k in range(distill.N_VIEWS)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x) and torch.equal(views[1], torch.rot90(x, 1, (2, 3))) and torch.equal(views[4], torch.flip(x, (3,)))
    got = distill.view_logits(_run(_teacher()), _crops(4)[0], bs=3)
    assert got.shape == (4, 8, 2)


def test_loss_is_zero_on_the_teachers_logits_and_adds_cross_entropy_on_labelled_rows_only():
    t = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    none = torch.tensor([-1, -1])
    assert float(distill.distill_loss(t, t, none, 3.0, 0.5)) == pytest.approx(0.0, abs=1e-6)
    ce = float(torch.nn.functional.cross_entropy(t[1:], torch.tensor([1])))
    assert float(distill.distill_loss(t, t, torch.tensor([-1, 1]), 3.0, 0.5)) == pytest.approx(0.5 * ce, rel=1e-5)
    assert float(distill.distill_loss(torch.zeros(2, 2), t, none, 3.0, 0.0)) > 0
    # kl_weight 0: the control trained on the labels alone
    assert float(distill.distill_loss(t, torch.zeros(2, 2), torch.tensor([-1, 1]), 3.0, 1.0, kl_weight=0.0)) == pytest.approx(ce, rel=1e-5)


def test_a_few_steps_bring_the_student_towards_the_teacher_and_the_export_matches_torch(tmp_path):
    x, y = _crops(16)
    # a confident teacher that reads the colour: the red channel's mean, spread to about ±3
    red = x[:, 0].mean(axis=(1, 2))
    z = 3 * (red - red.mean()) / red.std()
    teacher = np.repeat(np.stack([-z, z], axis=1)[:, None], distill.N_VIEWS, axis=1).astype(np.float32)
    labels = np.where(np.arange(len(y)) % 2 == 0, y, -1)
    torch.manual_seed(1)
    student = build_model("small_fruitnet_lite", 2, SIZE)

    def loss() -> float:
        z = torch.from_numpy(distill.torch_logits(student, x))
        return float(distill.distill_loss(z, torch.from_numpy(teacher[:, 0]), torch.full((len(x),), -1), 2.0, 0.0))

    before = loss()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(6):
        distill.train_epoch(student, opt, x, teacher, labels, rng, 8, 2.0, 0.1, max_steps=2)
    assert loss() < before

    path = tmp_path / "student.onnx"
    export_onnx(student, path, SIZE)
    got = distill.onnx_logits(distill.ort_session(path, 1), x)
    assert np.abs(got - distill.torch_logits(student, x)).max() < 1e-4

    cpu = distill.cpu_per_crop_ms({"student": path}, {"student": SIZE}, runs=4, rounds=2)
    assert cpu["student"]["runs"] == 4 and cpu["student"]["logits_ms"] > 0 and cpu["student"]["outputs"] == ["logits"]


def test_threshold_is_chosen_on_val_sessions_and_test_scored_at_it():
    y_val = np.array([0, 0, 0, 1, 1, 1])
    s_val = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    g_val = ["sound-day"] * 3 + ["rot-day"] * 3
    y_test, s_test = np.array([0, 1, 0, 1]), np.array([0.3, 0.8, 0.55, 0.4])
    got = distill.evaluate(y_val, s_val, g_val, y_test, s_test, ["a", "a", "b", "b"])
    assert got["threshold"] == pytest.approx(0.5)
    assert got["test"]["balanced_accuracy"] == pytest.approx(0.5) and set(got["test"]["per_session"]) == {"a", "b"}
    assert distill.evaluate(y_val, s_val, g_val, y_test, s_test, ["a"] * 4, threshold=0.35)["threshold"] == 0.35


def test_orchard_dates_are_the_first_half_and_the_box_mask_an_ellipse():
    frames = [{"date": d} for d in ["2022_07_01", "2022_06_01", "2022_08_01", "2022_09_01", "2022_06_01"]]
    assert distill_crops.orchard_tune_dates(frames) == {"2022_06_01", "2022_07_01"}
    m = distill_crops.box_ellipse_mask((10, 20, 30, 30))
    assert m.shape == (10, 20) and m[5, 10] and not m[0, 0]
