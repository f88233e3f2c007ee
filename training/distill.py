"""Distillation of a shipped defect model (the teacher, an ONNX artifact) into a small network trained
from scratch (the student, MobileNetV3-small by default), measured against the accuracy/CPU frontier.

    python -m training.distill --teacher models/apple-defect/0.5.1 --out var/distill/apple \
        [--epochs 24] [--input-size 128] [--baseline models/apple-defect/0.3.0]

Crops are cut as the service cuts them (grader.segment + grader.crop.crop_for_model with the teacher's
crop margin, background painted out):

* labelled: FruitNet single-apple photos of the teacher's train, val and test sessions
  (``training_data.splits`` of its metadata);
* unlabelled: every whole apple of the FruitNet group photos of the train sessions
  (training/crops.py: group_fruit_crops), and the annotated apples of the ECOPOM orchard frames of
  the dates bench/size_accuracy.py tunes on (the first half of the dates; its held-out dates never).

The student learns from the train sessions' single crops and the unlabelled crops: KL divergence to
the teacher's softened probabilities at temperature T (times T²) plus a small cross-entropy on the
labelled ones. Each crop is shown in one of its eight turns and mirror images, with the teacher's
logits of that same view. Val sessions choose the epoch (val AUC) and the threshold (mean per-session
balanced accuracy); test sessions are scored once, at the end. The student is exported to ONNX and
timed beside the teacher and the baseline (ONNX Runtime, 1 thread, batch 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from grader.defect import preprocess, softmax  # noqa: E402
from inference.onnx_model import OnnxDefectModel  # noqa: E402
from training.calibrate import pick_threshold_by_group  # noqa: E402
from training.distill_crops import GROUP, ORCHARD, SINGLE, collect_crops  # noqa: E402
from training.export import INPUT_NAME, OUTPUT_NAME, check_export, export_onnx  # noqa: E402
from training.metrics import auc, binary_report, json_safe  # noqa: E402
from training.models_registry import build_model  # noqa: E402

#: the eight views of a square crop: turns by 0, 90, 180, 270 degrees, each also mirrored
N_VIEWS = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """View ``k`` (0..7) of an NCHW batch: ``k % 4`` quarter turns, then a left-right mirror if ``k >= 4``."""
    y = torch.rot90(x, k % 4, dims=(2, 3))
    return torch.flip(y, dims=(3,)) if k >= 4 else y


# ------------------------------------------------------------------ crops


def onnx_logits(session: ort.InferenceSession, batch: np.ndarray, bs: int = 64) -> np.ndarray:
    """The graph's logits (its first output named ``logits``) for a preprocessed NCHW batch."""
    out = [session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch[i : i + bs])})[0] for i in range(0, len(batch), bs)]
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def view_logits(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, bs: int = 64) -> np.ndarray:
    """(N, 8, classes): ``run``'s logits for each of the eight views (:func:`dihedral`) of every crop
    of the preprocessed batch ``x``."""
    out = []
    for i in range(0, len(x), bs):
        xb = torch.from_numpy(x[i : i + bs])
        out.append(np.stack([run(dihedral(xb, k).contiguous().numpy()) for k in range(N_VIEWS)], axis=1))
    return np.concatenate(out)


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ student


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    ce_weight: float,
    kl_weight: float = 1.0,
) -> torch.Tensor:
    """``kl_weight`` · T² · KL(teacher ‖ student) at temperature T, plus ``ce_weight`` · cross-entropy
    on the rows with a label (``labels >= 0``); ``kl_weight`` 0: plain training on the labels."""
    t = temperature
    kl = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / t, dim=1),
        nn.functional.log_softmax(teacher_logits / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    loss = kl_weight * t * t * kl
    has = labels >= 0
    if ce_weight > 0 and bool(has.any()):
        loss = loss + ce_weight * nn.functional.cross_entropy(student_logits[has], labels[has])
    return loss


def train_epoch(
    student: nn.Module,
    opt: torch.optim.Optimizer,
    x: np.ndarray,
    teacher: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    batch_size: int,
    temperature: float,
    ce_weight: float,
    max_steps: int | None = None,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
    kl_weight: float = 1.0,
) -> float:
    """One pass over the preprocessed crops ``x`` in random order, each in a random view with the
    teacher's logits of that view (``teacher``: (N, 8, classes)). Returns the mean loss."""
    student.train()
    order = rng.permutation(len(x))
    losses = []
    for step, i in enumerate(range(0, len(order), batch_size)):
        if max_steps is not None and step >= max_steps:
            break
        idx = order[i : i + batch_size]
        if len(idx) < 2:  # batch norm needs two
            continue
        views = rng.integers(0, N_VIEWS, len(idx))
        xb = torch.from_numpy(x[idx])
        xb = torch.stack([dihedral(xb[j : j + 1], int(k))[0] for j, k in enumerate(views)]).contiguous(memory_format=torch.channels_last)
        tb = torch.from_numpy(teacher[idx, views].astype(np.float32))
        loss = distill_loss(student(xb), tb, torch.from_numpy(labels[idx]).long(), temperature, ce_weight, kl_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def torch_logits(model: nn.Module, x: np.ndarray, bs: int = 128) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(x[i : i + bs]).contiguous(memory_format=torch.channels_last)).numpy() for i in range(0, len(x), bs)]
        )


# ------------------------------------------------------------------ evaluation and timing


def p_defective(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return softmax(logits, temperature)[:, 1]


def evaluate(
    y_val: np.ndarray,
    s_val: np.ndarray,
    g_val: Sequence[str],
    y_test: np.ndarray,
    s_test: np.ndarray,
    g_test: Sequence[str],
    threshold: float | None = None,
) -> dict:
    """Val and test figures at the threshold with the best mean per-session balanced accuracy on val
    (``threshold`` given: at that one), with each split's per-session figures."""
    t = pick_threshold_by_group(y_val, s_val, list(g_val), worst=False) if threshold is None else threshold
    out: dict = {"threshold": float(t), "threshold_rule": "given" if threshold is not None else "mean per-session balanced accuracy on val"}
    for name, y, s, g in (("val", y_val, s_val, g_val), ("test", y_test, s_test, g_test)):
        rep = binary_report(y, s, t)
        g = np.asarray(g)
        rep["per_session"] = {k: binary_report(y[g == k], s[g == k], t, counts_only=True) for k in sorted(set(g.tolist()))}
        out[name] = rep
    return out


def cpu_per_crop_ms(models: dict[str, Path], input_sizes: dict[str, int], runs: int = 300, rounds: int = 5) -> dict[str, dict]:
    """Median wall milliseconds of one crop (batch 1) through each graph, ONNX Runtime on 1 thread, the
    models taking turns in ``rounds`` so they meet the same machine: once asking for the logits only,
    once for every output the graph has (what the service asks for)."""
    rng = np.random.default_rng(0)
    sessions = {name: ort_session(p, 1) for name, p in models.items()}
    feeds = {name: rng.normal(0, 1, (1, 3, input_sizes[name], input_sizes[name])).astype(np.float32) for name in models}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for what, outs in (("logits", [OUTPUT_NAME]), ("all_outputs", [o.name for o in sess.get_outputs()])):
                feed = {INPUT_NAME: feeds[name]}
                for _w in range(10):
                    sess.run(outs, feed)
                ts = times.setdefault((name, what), [])
                for _r in range(runs // rounds):
                    t0 = time.perf_counter()
                    sess.run(outs, feed)
                    ts.append(time.perf_counter() - t0)
    return {
        name: {
            "logits_ms": 1000 * float(np.median(times[(name, "logits")])),
            "all_outputs_ms": 1000 * float(np.median(times[(name, "all_outputs")])),
            "outputs": [o.name for o in sess.get_outputs()],
            "runs": len(times[(name, "logits")]),
        }
        for name, sess in sessions.items()
    }


# ------------------------------------------------------------------ the run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="the teacher's artifact (model.onnx + metadata.json)")
    ap.add_argument("--out", type=Path, required=True, help="where student.onnx and report.json go")
    ap.add_argument("--baseline", type=Path, default=Path("models/apple-defect/0.3.0"), help="a model re-evaluated and timed beside them")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cache-dir", type=Path, default=Path("var/distill/cache"))
    ap.add_argument("--arch", default="mobilenet_v3_small", help="the student's architecture (training/models_registry.py)")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--cache-size", type=int, default=160, help="side of the cached crops")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=3.0, help="softening of teacher and student logits in the KL term")
    ap.add_argument("--ce-weight", type=float, default=0.2, help="weight of the cross-entropy on the labelled crops")
    ap.add_argument("--kl-weight", type=float, default=1.0, help="weight of the KL term (0: a control trained on the labels only)")
    ap.add_argument("--no-unlabelled", action="store_true", help="distil on the labelled train crops only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cpu-runs", type=int, default=300)
    ap.add_argument("--max-steps", type=int, default=None, help="at most this many steps per epoch (a smoke run)")
    args = ap.parse_args(argv)
    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    teacher = OnnxDefectModel(args.teacher, threads=args.threads)
    tmeta = teacher.meta
    splits = tmeta["training_data"]["splits"]
    margin = float(tmeta["preprocessing"].get("crop_margin_frac", 0.08))
    table = collect_crops(args.data, splits, margin, args.cache_size, args.cache_dir, workers=2)
    counts = {
        f"{src}/{sp}": int(((table.source == src) & (table.split == sp)).sum())
        for src in (SINGLE, GROUP, ORCHARD)
        for sp in ("train", "val", "test")
    }
    print("crops:", {k: v for k, v in counts.items() if v}, f"({time.time() - t_start:.0f}s)", flush=True)

    # the student reads the teacher's preprocessing (its normalisation at the student's input size)
    spec = teacher.spec
    if tuple(spec.input_size) != (args.input_size, args.input_size):
        raise SystemExit(f"the teacher takes {spec.input_size} px; distil at its size (--input-size {spec.input_size[0]})")
    x = preprocess(list(table.crops), spec)
    t0 = time.time()
    tkey = hashlib.sha256(
        (teacher.sha256 + str(len(x)) + hashlib.sha256(x[:: max(1, len(x) // 64)].tobytes()).hexdigest()).encode()
    ).hexdigest()[:16]
    tcache = args.cache_dir / f"teacher-logits-{tkey}.npz"
    if tcache.exists():
        t_logits = np.load(tcache)["logits"]
    else:
        t_logits = view_logits(lambda b: onnx_logits(teacher.session, b), x)
        np.savez_compressed(tcache, logits=t_logits)
    print(f"teacher logits for {len(x)} crops x {N_VIEWS} views ({time.time() - t0:.0f}s)", flush=True)

    train_mask = table.split == "train"
    if args.no_unlabelled or args.kl_weight == 0:  # without the teacher, unlabelled crops teach nothing
        train_mask &= table.source == SINGLE
    tr, va, te = table.where(train_mask), table.where(table.split == "val"), table.where(table.split == "test")
    y_va, y_te = table.label[va], table.label[te]

    # channels-last: depthwise convolutions train about twice as fast on the CPU
    student = build_model(args.arch, 2, args.input_size).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * int(np.ceil(len(tr) / args.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    x_tr, t_tr, y_tr = x[tr], t_logits[tr], table.label[tr]
    t_va_dec = p_defective(t_logits[va, 0], spec.temperature) >= spec.threshold_defective
    history, best = [], None
    for epoch in range(1, args.epochs + 1):
        e0 = time.time()
        loss = train_epoch(
            student, opt, x_tr, t_tr, y_tr, rng, args.batch_size, args.temperature, args.ce_weight, args.max_steps, sched, args.kl_weight
        )
        z = torch_logits(student, x[va])
        s = p_defective(z)
        val_auc = auc(y_va, s)
        kl = float(distill_loss(torch.from_numpy(z), torch.from_numpy(t_logits[va, 0]), torch.full((len(va),), -1), args.temperature, 0.0))
        rec = {"epoch": epoch, "loss": loss, "val_auc": val_auc, "val_kl_to_teacher": kl, "seconds": time.time() - e0}
        history.append(rec)
        print(f"epoch {epoch:2d}: loss {loss:.4f}  val AUC {val_auc:.4f}  val KL to teacher {kl:.4f}  ({rec['seconds']:.0f}s)", flush=True)
        if np.isfinite(val_auc) and (best is None or val_auc > best[0]):
            best = (val_auc, epoch, {k: v.detach().clone() for k, v in student.state_dict().items()})
    assert best is not None
    student.load_state_dict(best[2])
    student = student.to(memory_format=torch.contiguous_format)
    torch.save(best[2], args.out / "student.pt")
    train_seconds = time.time() - t_start

    # test sessions: scored once, here
    g_va, g_te = table.session[va], table.session[te]
    z_va, z_te = torch_logits(student, x[va]), torch_logits(student, x[te])
    results: dict[str, dict] = {"student": evaluate(y_va, p_defective(z_va), g_va, y_te, p_defective(z_te), g_te)}
    t_va, t_te = p_defective(t_logits[va, 0], spec.temperature), p_defective(t_logits[te, 0], spec.temperature)
    results["teacher"] = evaluate(y_va, t_va, g_va, y_te, t_te, g_te)
    results["teacher_shipped_threshold"] = evaluate(y_va, t_va, g_va, y_te, t_te, g_te, threshold=spec.threshold_defective)
    stu = results["student"]
    stu["agreement_with_teacher"] = {
        "val": float(((p_defective(z_va) >= stu["threshold"]) == t_va_dec).mean()),
        "test": float(((p_defective(z_te) >= stu["threshold"]) == (t_te >= spec.threshold_defective)).mean()),
        "rule": "student at its val threshold against the teacher at its shipped threshold and temperature",
    }
    models = {"student": args.out / "student.onnx", "teacher": args.teacher / "model.onnx"}
    sizes = {"student": args.input_size, "teacher": spec.input_size[0]}
    if (args.baseline / "model.onnx").exists():
        base = OnnxDefectModel(args.baseline, threads=args.threads)
        bsess = ort_session(args.baseline / "model.onnx", args.threads)
        b_va = p_defective(onnx_logits(bsess, preprocess(list(table.crops[va]), base.spec)), base.spec.temperature)
        b_te = p_defective(onnx_logits(bsess, preprocess(list(table.crops[te]), base.spec)), base.spec.temperature)
        results["baseline"] = evaluate(y_va, b_va, g_va, y_te, b_te, g_te)
        results["baseline_shipped_threshold"] = evaluate(y_va, b_va, g_va, y_te, b_te, g_te, threshold=base.spec.threshold_defective)
        models["baseline"] = args.baseline / "model.onnx"
        sizes["baseline"] = base.spec.input_size[0]
    for name, r in results.items():
        print(
            f"{name:27s} val bal.acc {r['val']['balanced_accuracy']:.3f}  test bal.acc {r['test']['balanced_accuracy']:.3f} "
            f"[{r['test']['balanced_accuracy_ci95'][0]:.3f}, {r['test']['balanced_accuracy_ci95'][1]:.3f}]  test AUC {r['test']['auc']:.3f}  "
            f"(threshold {r['threshold']:.3f})",
            flush=True,
        )
    print(
        f"student agreement with the teacher: val {stu['agreement_with_teacher']['val']:.3f}, test {stu['agreement_with_teacher']['test']:.3f}"
    )

    export_onnx(student, models["student"], args.input_size)
    parity = check_export(student, models["student"], np.ascontiguousarray(x[te[:32]]))
    if parity["max_abs_diff_logits"] >= 1e-4:
        raise RuntimeError(f"ONNX export disagrees with torch: {parity}")
    print(f"ONNX parity: {parity}", flush=True)
    cpu = cpu_per_crop_ms(models, sizes, runs=args.cpu_runs)
    for name, c in cpu.items():
        print(
            f"CPU per crop {name:9s} logits {c['logits_ms']:.2f} ms, all outputs {c['all_outputs_ms']:.2f} ms ({c['runs']} runs, 1 thread)"
        )

    report = {
        "command": "python -m training.distill " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "teacher": {
            "dir": str(args.teacher),
            "version": tmeta.get("version"),
            "sha256": teacher.sha256,
            "architecture": tmeta.get("architecture"),
        },
        "baseline": str(args.baseline) if "baseline" in results else None,
        "splits": splits,
        "crops": counts,
        "student_train_crops": int(len(tr)),
        "history": history,
        "best_epoch": best[1],
        "results": results,
        "onnx_parity": parity,
        "cpu_per_crop": cpu,
        "train_seconds": train_seconds,
        "wall_seconds": time.time() - t_start,
    }
    (args.out / "report.json").write_text(json.dumps(json_safe(report), indent=1))
    print(f"wrote {args.out / 'report.json'} ({report['wall_seconds']:.0f}s)")


if __name__ == "__main__":
    main()
