"""Train a defect model: args -> config saved with the artifact -> train -> evaluate -> export.

    grader train --config training/configs/apple_defect.yaml --out models/apple-defect/0.1.0
    grader train --set train.epochs=2 --set data.kind=synthetic --out /tmp/tiny

The artifact directory receives model.onnx, metadata.json, config.yaml (resolved), manifest.json
and metrics.json. Checkpoints go to --work-dir so an interrupted run resumes with --resume.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from grader.crop import fruit_body
from grader.defect import preprocess
from training import distributed, mixstyle, probe
from training.artifact import finish
from training.calibrate import (
    defective_scores,
    outputs_collapsed,
    predict_logits,
    selection_score,
    type_report,
)
from training.config import (
    classes_of,
    colour_keep_of,
    defective_of,
    fruit_body_of,
    is_defective,
    spec_for,
    swa_of,
)
from training.data import (
    CropDataset,
    augmenting,
    group_balanced_sampler,
    load_data,
    resolve_colour_normalise,
    session_weighted_sampler,
    train_transform,
)
from training.finetune import Phases
from training.metrics import binary_report
from training.models_registry import build_model
from training.views import view_names


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def set_dropout(model: nn.Module, p: float) -> None:
    """``model.dropout``: every dropout layer's probability set to ``p`` (0: off)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"model.dropout must be within [0, 1), got {p}")
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = p


def run(cfg: dict[str, Any], out_dir: Path, work_dir: Path, resume: bool = False, report_split: str = "test") -> dict[str, Any]:
    """Train, calibrate on val, evaluate and export into ``out_dir``; the metadata. The figures
    printed at the end are ``report_split``'s ("val" keeps the test figures out of sight while
    choosing between candidates; metadata.json records both either way)."""
    if report_split not in ("val", "test"):
        raise ValueError(f"report_split must be val or test, got {report_split!r}")
    t_start = time.time()
    view_names(int(cfg["model"].get("test_time_views", 1)))  # a bad count fails now, not after training
    colour_keep_of(cfg), swa_of(cfg), fruit_body_of(cfg)  # and bad settings of these before the crops are made
    seed_everything(int(cfg["seed"]))
    torch.set_num_threads(int(cfg["train"].get("num_threads", 2)))
    ddp = distributed.setup()  # one process, or one of several under torchrun: only rank 0 writes files
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    if ddp.main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    with ddp.main_first():  # rank 0 cuts and caches the crops, the others read them
        crops, labels, sessions, manifest, digest = load_data(cfg, work_dir)
    if cfg["model"].get("colour_normalise") not in (None, False):
        cfg = resolve_colour_normalise(cfg, crops["train"])  # its canonical colour, fixed before anything uses it
        if ddp.main:
            (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if ddp.main:
        (out_dir / "manifest.json").write_text(json.dumps({"sha256": digest, "items": manifest}, indent=0))
    if (body := fruit_body_of(cfg)) is not None:  # the train crops as preprocess() will give every other crop
        crops["train"] = np.stack([fruit_body(c, body) for c in crops["train"]])
    spec0 = spec_for(cfg)
    eval_batches = {s: preprocess(list(crops[s]), spec0) for s in crops if s != "train"}

    classes = classes_of(cfg)
    model = build_model(cfg["model"]["arch"], len(classes), int(cfg["model"]["input_size"]))
    method = cfg["train"].get("method", "finetune")
    if method == "linear_probe":
        return run_linear_probe(cfg, model, crops, labels, sessions, eval_batches, digest, out_dir, t_start, report_split, ddp)
    if method != "finetune":
        raise ValueError(f"train.method must be finetune or linear_probe, got {method!r}")
    phases = Phases(model, cfg)  # which weights train in which epoch (training/finetune.py)
    style_hooks = mixstyle.attach(model, cfg["model"].get("mixstyle"))  # training only; removed before export
    if cfg["model"].get("bn_momentum") is not None:
        # torchvision's MobileNetV3 keeps BatchNorm running statistics with momentum 0.01: with a few
        # hundred steps in all, evaluation would run on stale statistics far from the weights'
        set_bn_momentum(model, float(cfg["model"]["bn_momentum"]))
    if cfg["model"].get("dropout") is not None:
        set_dropout(model, float(cfg["model"]["dropout"]))
    net = ddp.wrap(
        model, int(cfg["seed"]), frozen_phases=phases.frozen_ever
    )  # DistributedDataParallel under torchrun; `model` is what is validated and exported
    tr = cfg["train"]
    sampler = group_balanced_sampler(labels["train"], sessions["train"], int(cfg["seed"])) if tr.get("balance") == "group_label" else None
    if tr.get("balance") not in (None, "group_label"):
        raise ValueError(f"train.balance must be null or group_label, got {tr.get('balance')!r}")
    if tr.get("session_weight"):
        if sampler is not None:
            raise ValueError("train.session_weight and train.balance cannot both be set")
        sampler = session_weighted_sampler(sessions["train"], tr["session_weight"], int(cfg["seed"]))
    # train.batch_size is the global batch: under torchrun every process takes its slice of it
    loader = ddp.data_loader(
        CropDataset(
            crops["train"],
            labels["train"],
            train_transform(cfg),
            float(cfg["augment"].get("colour_transfer_p", 0.0)) if augmenting(cfg) else 0.0,
            int(cfg["seed"]) + ddp.rank,
            keep_colour=np.isin(labels["train"], [classes.index(c) for c in colour_keep_of(cfg)]),
        ),
        batch_size=int(tr["batch_size"]),
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(crops["train"]) > int(tr["batch_size"]),
        generator=torch.Generator().manual_seed(int(cfg["seed"])),
    )
    counts = np.bincount(labels["train"], minlength=len(classes)).astype(np.float32)
    # with a sampler (train.balance or train.session_weight) the batches' mix of classes is the sampler's and
    # the loss weighs every crop alike; without one, rarer classes weigh more
    class_weight = None if sampler is not None else torch.tensor(counts.sum() / np.maximum(counts, 1) / len(classes))
    criterion = ddp.criterion(nn.CrossEntropyLoss(weight=class_weight, label_smoothing=float(tr.get("label_smoothing", 0.0))))
    opt = torch.optim.AdamW(model.parameters(), lr=float(tr["lr"]), weight_decay=float(tr["weight_decay"]))
    epochs = int(tr["epochs"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(tr["lr"]), total_steps=max(1, epochs * len(loader)), pct_start=0.15)

    swa_epochs, swa_lr = swa_of(cfg)
    if swa_epochs and style_hooks:
        raise ValueError(
            "train.swa and model.mixstyle cannot both be set (the averaged copy would mix styles while its BatchNorm statistics are computed)"
        )
    swa_model = torch.optim.swa_utils.AveragedModel(model) if swa_epochs else None
    ckpt_path = work_dir / "checkpoint.pt"
    start_epoch, best, earlier_seconds = 0, {"score": -1.0, "state": copy.deepcopy(model.state_dict()), "epoch": -1}, 0.0
    history: list[dict[str, float]] = []
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False, map_location=ddp.device)
        model.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        start_epoch, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        if swa_model is not None and ck.get("swa") is not None:
            swa_model.load_state_dict(ck["swa"])
        earlier_seconds = float(ck.get("elapsed_seconds", 0.0))
        torch.set_rng_state(ck["rng"])
        if ddp.main:
            print(f"resumed from {ckpt_path} at epoch {start_epoch}")

    total_epochs = epochs + swa_epochs
    for epoch in range(start_epoch, total_epochs):
        in_swa = epoch >= epochs  # past the schedule: a constant rate, the weights averaged after each epoch
        if in_swa:
            for g in opt.param_groups:
                g["lr"] = swa_lr
        model.train()
        phase = phases.apply(epoch)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{total_epochs}" + (" (averaged)" if in_swa else ""),
            unit="batch",
            leave=False,
            disable=not ddp.main,
        )
        total, n = 0.0, 0
        for x, y in bar:
            x, y = x.to(ddp.device), y.to(ddp.device)
            opt.zero_grad(set_to_none=True)
            loss = criterion(net(x), y)
            loss.backward()
            opt.step()
            if not in_swa:
                sched.step()
            total, n = total + loss.item() * len(y), n + len(y)
            bar.set_postfix(loss=f"{total / n:.4f}")
        if in_swa:
            swa_model.update_parameters(model)
        if not ddp.main:  # rank 0 alone validates, selects and checkpoints
            continue
        val_logits = predict_logits(model, eval_batches["val"])
        val = binary_report(is_defective(labels["val"], cfg), defective_scores(val_logits, 1.0, cfg), 0.5)
        entry = {
            "epoch": epoch + 1,
            "phase": phase,
            "loss": total / max(n, 1),
            "val_balanced_accuracy": val["balanced_accuracy"],
            "val_auc": val["auc"],
        }
        # model selection on val AUC of sound vs defective (threshold-free), ties broken by later
        # epochs; a model that also tells defect types apart is selected on the mean of that AUC and
        # its balanced accuracy over the types of the defective fruit
        score = val["auc"]
        if len(defective_of(cfg)) > 1:
            entry["val_type_balanced_accuracy"] = type_report(labels["val"], val_logits, cfg)["balanced_accuracy"]
            score = (val["auc"] + entry["val_type_balanced_accuracy"]) / 2
        collapsed = outputs_collapsed(val_logits)
        if collapsed:
            entry["collapsed"] = True
        if in_swa:
            entry["averaged"] = True  # the figures are of this epoch's weights, not of the average
        history.append(entry)
        if not in_swa and not collapsed and score >= best["score"]:
            best = {"score": score, "state": copy.deepcopy(model.state_dict()), "epoch": epoch + 1}
        extra = f" type bal.acc {entry['val_type_balanced_accuracy']:.3f}" if "val_type_balanced_accuracy" in entry else ""
        if collapsed:
            extra += " (outputs constant or not finite on val: not a candidate)"
        print(
            f"epoch {epoch + 1}/{total_epochs} loss {total / max(n, 1):.4f} val bal.acc {val['balanced_accuracy']:.3f} auc {val['auc']:.3f}{extra} ({time.time() - t_start:.0f}s)"
        )
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": epoch,
                "best": best,
                "history": history,
                "rng": torch.get_rng_state(),
                "elapsed_seconds": earlier_seconds + time.time() - t_start,
                "swa": None if swa_model is None else swa_model.state_dict(),
            },
            ckpt_path,
        )

    if swa_model is not None:  # (under torchrun every process takes part: BatchNorm is synchronised)
        torch.optim.swa_utils.update_bn(loader, swa_model, device=ddp.device)
    model = ddp.unwrap(model)  # under torchrun: all meet, the process group ends, plain BatchNorm on the CPU
    if not ddp.main:
        return {}
    if swa_model is not None:
        # the average of the last swa_epochs epochs' weights is the model, not a selected epoch;
        # BatchNorm's running statistics are computed again for the averaged weights on the train crops
        # (above, before the processes parted)
        model.load_state_dict(swa_model.module.state_dict())
        val_logits = predict_logits(model, eval_batches["val"])
        if outputs_collapsed(val_logits):
            raise TrainingFailed("the averaged weights give constant or non-finite val outputs: try a lower train.swa.lr")
        val = binary_report(is_defective(labels["val"], cfg), defective_scores(val_logits, 1.0, cfg), 0.5)
        history.append(
            {"epoch": total_epochs, "averaged_model": True, "val_balanced_accuracy": val["balanced_accuracy"], "val_auc": val["auc"]}
        )
        print(f"weights of epochs {epochs + 1}-{total_epochs} averaged: val bal.acc {val['balanced_accuracy']:.3f} auc {val['auc']:.3f}")
        chosen: Any = f"average of {epochs + 1}-{total_epochs}"
    else:
        if best["epoch"] < 0:
            raise TrainingFailed(
                f"no epoch of {epochs} gave val outputs that vary (every one was constant up to rounding, or not finite): the network "
                "did not learn; try a lower train.lr, more epochs or another seed"
            )
        model.load_state_dict(best["state"])
        chosen = best["epoch"]
    for h in style_hooks:
        h.remove()
    for p in model.parameters():
        p.requires_grad_(True)
    torch.save(model.state_dict(), work_dir / "best.pt")
    return finish(
        cfg,
        model,
        out_dir,
        eval_batches,
        labels,
        sessions,
        digest,
        history,
        chosen,
        earlier_seconds + time.time() - t_start,
        train_crops=crops["train"],
        report_split=report_split,
    )


def run_linear_probe(cfg, model, crops, labels, sessions, eval_batches, digest, out_dir, t_start, report_split, ddp) -> dict[str, Any]:
    """``train.method: linear_probe`` (training/probe.py): the pretrained network as it is, its head
    fitted on the train crops' features (and ``train.probe_views`` - 1 augmented copies of each)."""
    if ddp.active:
        raise ValueError("train.method linear_probe runs on one process: launch it without torchrun")
    tr = cfg["train"]
    views = int(tr.get("probe_views", 1))
    if views < 1:
        raise ValueError(f"train.probe_views must be >= 1, got {views}")
    batches = [preprocess(list(crops["train"]), spec_for(cfg))]
    if views > 1:
        classes = classes_of(cfg)
        ds = CropDataset(
            crops["train"],
            labels["train"],
            train_transform(cfg),
            float(cfg["augment"].get("colour_transfer_p", 0.0)),
            int(cfg["seed"]),
            keep_colour=np.isin(labels["train"], [classes.index(c) for c in colour_keep_of(cfg)]),
        )
        for _ in tqdm(range(views - 1), desc="augmented views", unit="view", leave=False):
            batches.append(np.stack([ds[i][0].numpy() for i in range(len(ds))]))
    fit = tr.get("probe_fit", "train")
    if fit not in ("train", "cross_session"):
        raise ValueError(f"train.probe_fit must be train or cross_session, got {fit!r}")
    y_all = np.concatenate([labels["train"], labels["val"]])
    folds = probe.session_folds(is_defective(y_all, cfg), list(sessions["train"]) + list(sessions["val"]))
    if fit == "cross_session" and len(folds) < 2:
        # a dataset whose sessions (lots) cannot be held out in two folds of both classes: the
        # head learns from train and val chooses, as train.probe_fit: train does
        print(
            f"linear probe: {len(folds)} held-out fold(s) of both classes among the train and val sessions; "
            "cross_session needs two, fitting on train and choosing on val"
        )
        fit = "train"
    if fit == "cross_session":
        # the head learns from every session of train and val; held-out sessions choose the L2
        # strength, the temperature and the threshold (training/probe.py: run_cross_session)
        if views > 1:
            raise ValueError("train.probe_fit cross_session takes the plain crops only: set train.probe_views to 1")
        feats = np.concatenate([probe.pooled(model, batches[0]), probe.pooled(model, eval_batches["val"])])
        y = np.concatenate([labels["train"], labels["val"]])
        groups = list(sessions["train"]) + list(sessions["val"])
        got = probe.cross_session_for(cfg, feats, y, groups)
        probe.set_head(model, got["w"], got["b"])
        held_out = {"logits": got["oof_logits"], "labels": got["oof_labels"], "sessions": got["oof_groups"]}
        return finish(
            cfg,
            model,
            out_dir,
            eval_batches,
            labels,
            sessions,
            digest,
            got["history"],
            "linear probe (cross-session)",
            time.time() - t_start,
            train_crops=crops["train"],
            report_split=report_split,
            held_out=held_out,
        )
    history = probe.run_probe(
        model,
        cfg,
        batches,
        labels["train"],
        sessions["train"],
        eval_batches["val"],
        lambda z: selection_score(cfg, labels["val"], z),
        len(classes_of(cfg)),
    )
    return finish(
        cfg,
        model,
        out_dir,
        eval_batches,
        labels,
        sessions,
        digest,
        history,
        "linear probe",
        time.time() - t_start,
        train_crops=crops["train"],
        report_split=report_split,
    )


class TrainingFailed(RuntimeError):
    """Training ended without a model worth exporting."""


if __name__ == "__main__":  # python -m training.train ... (and torchrun ... -m training.train ...): `grader train ...`
    from training.commands import main

    raise SystemExit(main("train"))
