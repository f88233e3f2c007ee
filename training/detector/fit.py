"""Training the orchard detector: the CenterNet loss, the tile cache (the frozen layers run once per
augmented tile), the training loop, and the self-training rounds (confident unboxed apples left
out of the loss)."""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from inference.detector import box_iou
from training.detector.augment import TileGeom, normalise, render_tile, sample_geom
from training.detector.evaluation import predict_frames
from training.detector.frames import Frame
from training.detector.model import CentreNet, Lite0Features, build_model
from training.detector.targets import tile_targets


def centre_loss(
    out: tuple[torch.Tensor, ...], t: dict[str, torch.Tensor], size_w: float, off_w: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's penalty-reduced focal loss on the heatmaps (negatives weighted by ``negw``), L1 on
    log size and offset at the centres."""
    heat, size, off = out
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    gt = t["heat"]
    pos = gt.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - gt) ** 4 * (1 - pos) * t["negw"]
    n_pos = pos.sum().clamp(min=1)
    l_heat = -(pos_loss.sum() + neg_loss.sum()) / n_pos
    b, _, gh, gw = size.shape
    idx = t["idx"]
    mask = t["mask"][..., None]
    pred_wh = size.flatten(2).gather(2, idx[:, None, :].expand(b, 2, idx.shape[1])).transpose(1, 2)
    pred_off = off.flatten(2).gather(2, idx[:, None, :].expand(b, 2, idx.shape[1])).transpose(1, 2)
    n_obj = mask.sum().clamp(min=1)
    l_wh = (torch.abs(pred_wh - t["wh"]) * mask).sum() / n_obj / 2
    l_off = (torch.abs(pred_off - t["off"]) * mask).sum() / n_obj / 2
    total = l_heat + size_w * l_wh + off_w * l_off
    return total, {"heat": float(l_heat.detach()), "wh": float(l_wh.detach()), "off": float(l_off.detach())}


@dataclass
class TileCache:
    geoms: list[TileGeom]
    inputs: list[torch.Tensor]  # the frozen part's outputs, float16, one tensor per output (N, ...)


def build_cache(
    model: CentreNet, frames: Sequence[Frame], cfg: dict[str, Any], rng: np.random.Generator, log: Callable[[str], None]
) -> TileCache:
    """Sample and render ``train.tiles`` augmented tiles and run the frozen part of the network on them once."""
    n = int(cfg["train"]["tiles"])
    # tiles are drawn over frames in turn, so every frame gives as many
    order = np.concatenate([rng.permutation(len(frames)) for _ in range(-(-n // len(frames)))])[:n]
    geoms = [sample_geom(frames, int(i), rng, cfg) for i in order]
    chunks: list[list[torch.Tensor]] = []
    model.eval()
    chunk = 32
    with torch.no_grad():
        for s in tqdm(range(0, n, chunk), desc="augmented tiles through the frozen layers", unit="chunk", file=sys.stderr):
            tiles = np.stack([render_tile(frames, g, rng, cfg) for g in geoms[s : s + chunk]])
            outs = model.frozen(torch.from_numpy(normalise(tiles, cfg)))
            chunks.append([o.half() for o in outs])
    inputs = [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]
    log(f"cached {n} tiles: " + ", ".join(f"{tuple(t.shape)}" for t in inputs) + f" ({sum(t.numel() * 2 for t in inputs) / 2**20:.0f} MiB)")
    return TileCache(geoms, inputs)


def cache_targets(cache: TileCache, frames: Sequence[Frame], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    classes = cfg["data"]["classes"]
    apple = classes.index("apple") if "apple" in classes else -1
    ball = classes.index("tennis_ball") if "tennis_ball" in classes else -1
    pseudo_as = cfg["train"]["pseudo"].get("as", "ignore")
    w = float(cfg["train"].get("apple_neg_weight", 1.0))
    ts = [tile_targets(frames[g.frame], g, len(classes), apple, int(cfg["train"]["max_objects"]), pseudo_as, w, ball) for g in cache.geoms]
    return {k: torch.from_numpy(np.stack([t[k] for t in ts])) for k in ts[0]}


def fit(
    model: CentreNet,
    cache: TileCache,
    targets: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    seed: int,
    log: Callable[[str], None],
    desc: str = "train",
    subset: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Train the unfrozen part on the cached tiles (``subset``: only those tile indices)."""
    tr = cfg["train"]
    if subset is not None:
        sub = torch.from_numpy(np.asarray(subset, np.int64))
        cache = TileCache([cache.geoms[i] for i in subset], [t[sub] for t in cache.inputs])
        targets = {k: v[sub] for k, v in targets.items()}
    torch.manual_seed(seed)
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.features.parameters() if p.requires_grad and id(p) not in head_ids]
    backbone_lr = float(tr["backbone_lr"]) if isinstance(model.features, Lite0Features) else float(tr["lr"])
    groups = [{"params": head_params, "lr": float(tr["lr"])}]
    if body_params:
        groups.append({"params": body_params, "lr": backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=float(tr["weight_decay"]))
    n, bs, epochs = len(cache.geoms), int(tr["batch_size"]), int(tr["epochs"])
    steps = epochs * (-(-n // bs))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", file=sys.stderr)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=g)
        sums: dict[str, float] = {}
        for s in range(0, n, bs):
            ix = perm[s : s + bs]
            inputs = [t[ix].float() for t in cache.inputs]
            t = {k: v[ix] for k, v in targets.items()}
            loss, parts = centre_loss(model.rest(*inputs), t, float(tr["size_weight"]), float(tr["offset_weight"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(ix)
        rec = {k: v / n for k, v in sums.items()}
        history.append({"epoch": epoch + 1, **{k: round(v, 4) for k, v in rec.items()}})
        bar.set_postfix(loss=f"{rec['loss']:.3f}", heat=f"{rec['heat']:.3f}")
    log(f"{desc}: last epoch " + ", ".join(f"{k} {v}" for k, v in history[-1].items()))
    model.eval()
    return history


def pseudo_ignore(model: CentreNet, frames: Sequence[Frame], cfg: dict[str, Any]) -> int:
    """Confident apple detections on ``frames`` that match no box (of either class) become the
    frames' ``ignore`` boxes; returns how many."""
    ps = cfg["train"]["pseudo"]
    apple = cfg["data"]["classes"].index("apple")
    dets = predict_frames(model, frames, cfg, desc="self-training: detect unboxed apples")
    total = 0
    for fr, d in zip(frames, dets):
        sel = (d.classes == apple) & (d.scores >= float(ps["score"]))
        b = d.boxes[sel]
        if len(fr.boxes) and len(b):
            b = b[box_iou(b, fr.boxes).max(1) < float(ps["match_iou"])]
        fr.ignore = b
        total += len(b)
    return total


def train_detector(
    cfg: dict[str, Any],
    train_frames: Sequence[Frame],
    log: Callable[[str], None] = print,
    pretrained: bool = True,
    after_round: Callable[[int, CentreNet], dict[str, Any]] | None = None,
) -> tuple[CentreNet, dict[str, Any]]:
    """Cache the tiles, train, and (``train.pseudo.rounds``) train again with confident unboxed apples
    ignored. ``after_round(r, model)``: figures of each round's model (kept in ``info["rounds"]``)."""
    torch.set_num_threads(int(cfg.get("threads", 1)))
    seed = int(cfg["seed"])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = build_model(cfg, pretrained)
    init_state = copy.deepcopy(model.state_dict())
    cache = build_cache(model, train_frames, cfg, rng, log)
    cache_s = time.perf_counter() - t0
    rounds = int(cfg["train"]["pseudo"].get("rounds", 0)) if "apple" in cfg["data"]["classes"] else 0
    folds = int(cfg["train"]["pseudo"].get("cross_fit", 0))
    # with cross-fitting, the model of round 0 proposes nothing: it is fitted only for its figures
    round0 = not (rounds and folds > 1) or bool(cfg["train"]["pseudo"].get("report_round0", True))
    history = {"round_0": fit(model, cache, cache_targets(cache, train_frames, cfg), cfg, seed, log, "train")} if round0 else {}
    eval_s = 0.0

    def judge(r: int) -> dict[str, Any]:
        nonlocal eval_s
        t = time.perf_counter()
        out = after_round(r, model) if after_round else {}
        eval_s += time.perf_counter() - t
        return out

    rounds_eval = {"round_0": judge(0)} if round0 else {}
    pseudo_counts = []
    for r in range(rounds):
        if folds > 1:
            # the unboxed apples of a frame are proposed by a model that never saw that frame: one fitted
            # on the other folds (dates dealt to folds in turn, so each fold spans the season)
            dates = sorted({f.date for f in train_frames})
            fold_of = {d: i % folds for i, d in enumerate(dates)}
            targets = cache_targets(cache, train_frames, cfg)
            found: list[np.ndarray] = [np.zeros((0, 4))] * len(train_frames)
            for k in range(folds):
                inside = [i for i, f in enumerate(train_frames) if fold_of[f.date] == k]
                subset = np.array([j for j, g in enumerate(cache.geoms) if fold_of[train_frames[g.frame].date] != k])
                model.load_state_dict(init_state)
                history[f"round_{r + 1}_fold_{k}"] = fit(
                    model, cache, targets, cfg, seed + 100 * (r + 1) + k, log, f"self-training {r + 1}: fold {k + 1}/{folds}", subset
                )
                held = [train_frames[i] for i in inside]
                pseudo_ignore(model, held, cfg)
                for i, f in zip(inside, held):
                    found[i] = f.ignore
            for f, b in zip(train_frames, found):
                f.ignore = b
            pseudo_counts.append(int(sum(len(b) for b in found)))
        else:
            pseudo_counts.append(pseudo_ignore(model, train_frames, cfg))
        log(
            f"self-training round {r + 1}: {pseudo_counts[-1]} unboxed apples (score >= {cfg['train']['pseudo']['score']}) on "
            f"{len(train_frames)} train frames left out of the loss"
        )
        model.load_state_dict(init_state)
        history[f"round_{r + 1}"] = fit(
            model, cache, cache_targets(cache, train_frames, cfg), cfg, seed + r + 1, log, f"train (self-training {r + 1})"
        )
        rounds_eval[f"round_{r + 1}"] = judge(r + 1)
    info = {
        "rounds": rounds_eval if after_round else {},
        "train_seconds": round(time.perf_counter() - t0 - eval_s, 1),
        "cache_seconds": round(cache_s, 1),
        "tiles": len(cache.geoms),
        "pseudo_ignored": pseudo_counts,
        "history": history,
    }
    return model, info
