"""Export a trained torch model to ONNX and check the export against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from grader.defect import parity_probe, softmax

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: Path, input_size: int, opset: int = 17) -> None:
    model.eval()
    dummy = torch.zeros(1, 3, input_size, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def check_export(model: nn.Module, onnx_path: Path, batch: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """Run the same preprocessed batch through torch and ONNX Runtime; return the largest
    differences of logits and of softmax scores. Raises if scores differ by 1e-4 or more."""
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    out = {
        "max_abs_diff_logits": float(np.abs(ref - got).max()),
        "max_abs_diff_scores": float(np.abs(softmax(ref, temperature) - softmax(got, temperature)).max()),
        "n_images": int(len(batch)),
    }
    if out["max_abs_diff_scores"] >= 1e-4:
        raise RuntimeError(f"ONNX export disagrees with torch: {out}")
    return out


def parity_record(model: nn.Module, input_size: int, tolerance: float = 1e-3) -> dict:
    """Torch's logits on grader.defect.parity_probe, stored in metadata.json: the registry refuses an
    artifact whose ONNX graph no longer reproduces them."""
    model.eval()
    probe = parity_probe((input_size, input_size))
    with torch.no_grad():
        logits = model(torch.from_numpy(probe)).numpy()
    return {"probe": "grader.defect.parity_probe(input_size)", "logits": logits.astype(float).tolist(), "tolerance": tolerance}
