"""The fruit check: a fruit / not-fruit head on the defect model's own pooled features.

The belt segmentation proposes candidate regions; on real photos some are a dark wall, leaves, a
rail or a piece of the table. The defect model runs on every candidate anyway, so a logistic
regression on the same pooled features (1280 numbers for EfficientNet-Lite0) costs one dot product:
``fruit_score`` = sigmoid(w · pooled + b), an output of the same ONNX graph. Serving drops a candidate
whose score is below ``thresholds.fruit`` (grader.pipeline.grade_image): never graded, never queued.

Fitted on datasets/regions.py (real photos' proposals labelled fruit / not fruit, orchard windows,
synthetic fruit and clutter): train split to fit, val to choose the threshold (keep at least
``keep_fruit`` of the val fruit), test to report.

    python -m training.fruit_check models/apple-defect/0.4.0 --data-root ../shared/data --write
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from datasets import regions as regions_mod
from grader.defect import ModelSpec
from inference.metadata import read_spec
from training.explain import find_head, run_graph, strip_outputs
from training.graph import GraphBuilder, finish_graph, strip_branch, with_output

FRUIT_OUTPUT = "fruit_score"
PREFIX = "fruit_check/"
#: the share of val fruit regions the threshold must keep. Not higher: "the largest proposal of a
#: one-fruit photo is the fruit" is sometimes wrong (a big leaf, the table), so a few val "fruit"
#: are background and a rule that must keep them all ends at threshold 0
DEFAULT_KEEP_FRUIT = 0.97


def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without an earlier fruit-check branch."""
    return strip_branch(model, PREFIX, (FRUIT_OUTPUT,))


def _head(model: onnx.ModelProto, spec: ModelSpec):
    """The classifier head, found on the graph as exported (without the explanation and fruit-check branches)."""
    return find_head(strip_outputs(strip(model)), spec.output_name)


def pooled_features(model: onnx.ModelProto, spec: ModelSpec, crops) -> np.ndarray:
    head = _head(model, spec)
    feats = run_graph(with_output(model, head.pooled), [head.pooled], crops, spec)[0]
    return feats.reshape(len(feats), -1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (classes weighted equally), standardisation folded into
    the weights: (w, b) on the raw features."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mu) / sd, dtype=torch.float64)
    ys = torch.tensor(y, dtype=torch.float64)
    pos = float(ys.mean())
    weight = torch.where(ys > 0, 0.5 / max(pos, 1e-9), 0.5 / max(1 - pos, 1e-9))
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = xs @ w + b
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(z, ys, reduction="none")).mean() + l2 * (w * w).sum() / (
            2 * len(ys)
        )
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / sd
    b_raw = float(b.detach().numpy()[0] - (w_raw * mu).sum())
    return w_raw.astype(np.float32), b_raw


def add_branch(model: onnx.ModelProto, spec: ModelSpec, w: np.ndarray, b: float) -> onnx.ModelProto:
    """``fruit_score`` (N,) = sigmoid(pooled · w + b) added to the graph (an earlier one replaced)."""
    base = strip(model)
    head = _head(model, spec)
    bld = GraphBuilder(base, prefix=PREFIX)
    z = bld.node("Gemm", [head.pooled, bld.const("w", w.reshape(-1, 1).astype(np.float32)), bld.const("b", np.array([b], np.float32))])
    flat = bld.node("Flatten", [z], axis=0)
    squeezed = bld.node("Reshape", [flat, bld.const("shape", np.array([-1], np.int64))])
    bld.node("Sigmoid", [squeezed], output=FRUIT_OUTPUT)
    return finish_graph(base, bld, {FRUIT_OUTPUT: ["batch"]})


def pick_threshold(fruit_scores: np.ndarray, keep: float, other_scores: np.ndarray | None = None) -> float:
    """The threshold with the best balanced accuracy (fruit kept, not-fruit rejected) among those
    keeping at least ``keep`` of the fruit scores at or above it; without not-fruit scores, the
    largest such threshold."""
    if not len(fruit_scores):
        return 0.5
    highest = float(np.quantile(fruit_scores, 1.0 - keep, method="lower"))
    if other_scores is None or not len(other_scores):
        return highest
    best_t, best = highest, -1.0
    for t in np.unique(np.concatenate([fruit_scores, other_scores])):
        if t > highest:
            break
        ba = ((fruit_scores >= t).mean() + (other_scores < t).mean()) / 2
        if ba > best + 1e-12:
            best_t, best = float(t), float(ba)
    return best_t


def _report(scores: np.ndarray, is_fruit: np.ndarray, threshold: float, sources: list[str]) -> dict[str, Any]:
    def one(sel: np.ndarray) -> dict[str, Any]:
        f, nf = sel & is_fruit, sel & ~is_fruit
        return {
            "n_fruit": int(f.sum()),
            "n_not_fruit": int(nf.sum()),
            "fruit_kept": float((scores[f] >= threshold).mean()) if f.any() else None,
            "not_fruit_rejected": float((scores[nf] < threshold).mean()) if nf.any() else None,
        }

    src = np.array(sources)
    return {**one(np.ones(len(scores), bool)), "per_source": {s: one(src == s) for s in sorted(set(sources))}}


def fit(
    model: onnx.ModelProto,
    spec: ModelSpec,
    crops: np.ndarray,
    is_fruit: np.ndarray,
    regions: list,
    keep: float = DEFAULT_KEEP_FRUIT,
    l2: float | Sequence[float] = 1.0,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The graph with ``fruit_score`` and the record for metadata (threshold, rule, figures per split).
    ``l2``: one strength, or several: the one whose threshold (chosen on val as below) gives the best
    balanced accuracy on val wins (the first of the grid on a tie)."""
    splits = np.array([r.split for r in regions])
    feats = pooled_features(model, spec, crops)
    tr = splits == "train"
    if not (is_fruit[tr].any() and (~is_fruit[tr]).any()):
        raise ValueError("the fruit check needs fruit and not-fruit regions in train")
    val = splits == "val"
    choose = val if (val & is_fruit).any() else tr
    grid = [float(l2)] if isinstance(l2, (int, float)) else [float(v) for v in l2]
    tried: dict[float, float] = {}
    best = None
    for strength in grid:
        w, b = fit_logistic(feats[tr], is_fruit[tr].astype(float), strength)
        s = 1.0 / (1.0 + np.exp(-(feats @ w + b)))
        t = pick_threshold(s[choose & is_fruit], keep, s[choose & ~is_fruit])
        nf = s[choose & ~is_fruit]
        ba = ((s[choose & is_fruit] >= t).mean() + ((nf < t).mean() if len(nf) else 1.0)) / 2
        tried[strength] = round(float(ba), 4)
        if best is None or ba > best[0] + 1e-12:
            best = (ba, strength, w, b)
    assert best is not None
    _ba, l2_chosen, w, b = best
    edited = add_branch(model, spec, w, b)
    scores = run_graph(edited, [FRUIT_OUTPUT], crops, spec)[0]
    want = 1.0 / (1.0 + np.exp(-(feats @ w + b)))
    if not np.allclose(scores, want, atol=1e-4):
        raise RuntimeError(f"fruit_score in the graph disagrees with its fit (max |Δ| {np.abs(scores - want).max():.3g})")
    threshold = pick_threshold(scores[choose & is_fruit], keep, scores[choose & ~is_fruit])
    sources = [r.source for r in regions]
    record = {
        "threshold": threshold,
        "rule": (
            f"best balanced accuracy (fruit kept, not-fruit rejected) on the {'val' if choose is val else 'train'} regions among thresholds "
            f"keeping >= {keep:g} of their fruit; below it a candidate is not a fruit"
            + (
                ""
                if len(grid) == 1
                else f"; the L2 strength chosen by the same balanced accuracy among {', '.join(f'{v:g}' for v in grid)}"
            )
        ),
        "fitted_on": "datasets/regions.py train split: real photos' segmentation proposals labelled fruit / not fruit, orchard windows, synthetic fruit and clutter",
        "l2": l2_chosen,
        **({} if len(grid) == 1 else {"l2_balanced_accuracy": {f"{k:g}": v for k, v in tried.items()}}),
        "metrics": {
            s: _report(scores[splits == s], is_fruit[splits == s], threshold, [sources[i] for i in np.flatnonzero(splits == s)])
            for s in ("train", "val", "test")
            if (splits == s).any()
        },
    }
    return edited, record


def update_metadata(meta: dict[str, Any], record: dict[str, Any]) -> None:
    meta.setdefault("thresholds", {})["fruit"] = record["threshold"]
    meta["thresholds"]["fruit_rule"] = record["rule"]
    meta.setdefault("outputs", {})[FRUIT_OUTPUT] = {
        "shape": ["N"],
        "meaning": "P(the crop is a fruit) from a logistic regression on the pooled features (training/fruit_check.py)",
        "fitted_on": record["fitted_on"],
        "l2": record["l2"],
        **({"l2_balanced_accuracy": record["l2_balanced_accuracy"]} if "l2_balanced_accuracy" in record else {}),
    }
    meta.setdefault("metrics", {})["fruit_check"] = record["metrics"]


#: FruitNet capture sessions per split, as the apple models split them
APPLE_SPLITS = {"train": ["20190809", "20200728", "20190910"], "val": ["20190812", "IMG_8xxx"], "test": ["IMG_9xxx", "20190824"]}


def regions_for(cfg_fc: dict[str, Any], apple_splits: dict[str, list[str]] | None, work_dir: Path, size: int = 160, margin: float = 0.08):
    """datasets/regions.py's labelled regions under ``fruit_check.data_root`` (FruitNet split by
    ``apple_splits`` when they are session lists, else as the apple models split it)."""
    root = Path(cfg_fc.get("data_root", "../shared/data"))
    if not apple_splits or set(apple_splits) != {"train", "val", "test"}:
        apple_splits = APPLE_SPLITS
    return regions_mod.build(
        root,
        apple_splits,
        size=size,
        margin=margin,
        work_dir=work_dir / "cache",
        n_synthetic=int(cfg_fc.get("n_synthetic", 400)),
        limit=cfg_fc.get("limit"),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.fruit_check", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="a model directory (model.onnx + metadata.json)")
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--work-dir", type=Path, default=Path("var/fruit_check"))
    p.add_argument("--keep-fruit", type=float, default=DEFAULT_KEEP_FRUIT)
    p.add_argument("--n-synthetic", type=int, default=400)
    p.add_argument("--l2", default="1", help="the L2 strength, or several comma-separated: chosen on val (default %(default)s)")
    p.add_argument("--write", action="store_true", help="write the graph and metadata back (else only report)")
    a = p.parse_args(argv)
    meta = json.loads((a.artifact / "metadata.json").read_text())
    spec = read_spec(meta)
    splits = (meta.get("training_data") or {}).get("splits") if meta.get("commodity") == "apple" else None
    crops, is_fruit, regs = regions_for(
        {"data_root": a.data_root, "n_synthetic": a.n_synthetic}, splits, a.work_dir, margin=spec.crop_margin_frac
    )
    print(json.dumps(regions_mod.counts(regs), indent=1))
    model = onnx.load(str(a.artifact / "model.onnx"))
    edited, record = fit(model, spec, crops, is_fruit, regs, a.keep_fruit, [float(v) for v in a.l2.split(",")])
    print(json.dumps({k: v for k, v in record.items() if k != "metrics"}, indent=1))
    for split, rep in record["metrics"].items():
        print(
            f"{split}: fruit kept {rep['fruit_kept']}, not fruit rejected {rep['not_fruit_rejected']} "
            f"({rep['n_fruit']} fruit, {rep['n_not_fruit']} not)"
        )
        for s, r in rep["per_source"].items():
            print(f"  {s}: fruit kept {r['fruit_kept']}, not fruit rejected {r['not_fruit_rejected']} ({r['n_fruit']}/{r['n_not_fruit']})")
    if a.write:
        onnx.save(edited, str(a.artifact / "model.onnx"))
        update_metadata(meta, record)
        (a.artifact / "metadata.json").write_text(json.dumps(meta, indent=2, allow_nan=False))
        print(f"written to {a.artifact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
