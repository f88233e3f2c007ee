"""What the model crop should hold, measured with a linear probe on frozen ImageNet EfficientNet-Lite0
features: the service's painted fruit crop, the crop with its background, a wider crop, the whole
photo, at 128 and 224 px. FruitNet apples split by capture session as the apple model is.

    .venv/bin/python bench/probe_crops.py          # about 10 min on 2 cores; needs ../shared/data
"""

import time
from pathlib import Path

import cv2
import numpy as np
import torch

from datasets import fruitnet
from grader.crop import crop_for_model
from grader.segment import segment_fruits
from training.efficientnet_lite import efficientnet_lite0
from training.metrics import auc, binary_report, pick_threshold

torch.set_num_threads(1)
root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fruitnet-apples"
splits = {"train": ["20190809", "20200728", "20190910"], "val": ["20190812", "IMG_8xxx"], "test": ["IMG_9xxx", "20190824"]}
man = fruitnet.build_manifest(root, splits, "single")
variants = {"painted": [], "unpainted": [], "unpainted_m25": [], "photo": []}
ys, sp = [], []
t = time.time()
for it in man:
    rgb = cv2.cvtColor(cv2.imread(str(root / it.path)), cv2.COLOR_BGR2RGB)
    segs = segment_fruits(rgb)
    if segs:
        s = max(segs, key=lambda s: int(s.mask.sum()))
        variants["painted"].append(cv2.resize(crop_for_model(rgb, s.bbox, 0.08, s.mask), (224, 224), interpolation=cv2.INTER_AREA))
        variants["unpainted"].append(cv2.resize(crop_for_model(rgb, s.bbox, 0.08, None), (224, 224), interpolation=cv2.INTER_AREA))
        variants["unpainted_m25"].append(cv2.resize(crop_for_model(rgb, s.bbox, 0.25, None), (224, 224), interpolation=cv2.INTER_AREA))
    else:
        for k in ("painted", "unpainted", "unpainted_m25"):
            variants[k].append(cv2.resize(rgb, (224, 224)))
    h, w = rgb.shape[:2]
    m = min(h, w)
    variants["photo"].append(
        cv2.resize(rgb[(h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m], (224, 224), interpolation=cv2.INTER_AREA)
    )
    ys.append(int(it.label == "bad" or it.label == "defective"))
    sp.append(it.split)
print("crops", time.time() - t, flush=True)
ys = np.array(ys)
sp = np.array(sp)


def logreg(Xtr, ytr, C):
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    X = torch.tensor((Xtr - mu) / sd, dtype=torch.float64)
    y = torch.tensor(ytr, dtype=torch.float64)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def clo():
        opt.zero_grad()
        l = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, y) + (w * w).sum() / (2 * C * len(y))
        l.backward()
        return l

    opt.step(clo)
    return lambda Z: torch.sigmoid(torch.tensor((Z - mu) / sd, dtype=torch.float64) @ w + b).detach().numpy()


for size in (128, 224):
    m = efficientnet_lite0(1000, size).eval()
    for name, imgs in variants.items():
        x = np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in imgs]).astype(np.float32)
        x = (x - 127) / 128
        F = []
        with torch.no_grad():
            for i in range(0, len(x), 32):
                F.append(m.pooled(torch.from_numpy(x[i : i + 32]).permute(0, 3, 1, 2).contiguous()).numpy())
        F = np.concatenate(F)
        for C in (0.01, 0.1):
            f = logreg(F[sp == "train"], ys[sp == "train"], C)
            sv, st = f(F[sp == "val"]), f(F[sp == "test"])
            t_ = pick_threshold(ys[sp == "val"], sv, 0.95)
            print(
                f"{name:14s} {size} C={C}: val auc {auc(ys[sp == 'val'], sv):.3f} test auc {auc(ys[sp == 'test'], st):.3f} test bal.acc@val-t {binary_report(ys[sp == 'test'], st, t_)['balanced_accuracy']:.3f}",
                flush=True,
            )
