"""One lever of the accuracy / CPU frontier: ONNX Runtime static INT8 quantisation of a model's
convolutions (calibrated on its own train crops), against the float graph, side by side.

    .venv/bin/python bench/quantize_eval.py models/apple-defect/0.4.0 [--repeats 200] [--keep var/int8]

For the float and the INT8 graph: CPU milliseconds per crop at batch 1 on one thread (the thread's
own CPU time, so other load on the machine does not count), and ROC AUC and balanced accuracy at
the artifact's threshold on its val and test crops (the crops training cut, from the artifact's
own config and manifest rules; needs ../shared/data). The INT8 graph keeps the extra outputs
(defect map, OOD distances, fruit check) in float; only Conv layers are quantised (QDQ, per channel).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cpu_ms_per_crop(path: Path, size: tuple[int, int], repeats: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    name = s.get_inputs()[0].name
    for _ in range(10):
        s.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        s.run(None, {name: x})
        times.append(time.thread_time() - t0)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    import json

    import onnx
    import yaml
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from grader.defect import preprocess
    from inference.metadata import read_spec
    from training.calibrate import defective_scores
    from training.config import is_defective
    from training.data import load_data
    from training.explain import run_graph
    from training.metrics import auc, binary_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--calibration-crops", type=int, default=64)
    p.add_argument("--keep", type=Path, help="write the INT8 model.onnx here")
    a = p.parse_args(argv)
    meta = json.loads((a.artifact / "metadata.json").read_text())
    spec = read_spec(meta)
    cfg = yaml.safe_load((a.artifact / "config.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="grader-int8-"))
    crops, labels, _sessions, _items, _digest = load_data(cfg, REPO / "var" / "train" / f"{cfg['name']}-{cfg['version']}")
    calib = preprocess(list(crops["train"][:: max(1, len(crops["train"]) // a.calibration_crops)]), spec)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{spec.input_name: calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    src = a.artifact / "model.onnx"
    int8 = (a.keep / "model.onnx") if a.keep else work / "model.int8.onnx"
    int8.parent.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(src))
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv" and not n.name.startswith(("explain/", "fruit_check/", "views/"))]
    quantize_static(
        str(src),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        nodes_to_quantize=convs,
    )
    rows = []
    for name, path in (("float32", src), ("int8 (Conv, QDQ)", int8)):
        row = {
            "graph": name,
            "cpu_ms_per_crop": round(cpu_ms_per_crop(path, spec.input_size, a.repeats), 2),
            "size_mib": round(path.stat().st_size / 2**20, 1),
        }
        for split in ("val", "test"):
            logits = run_graph(path, [spec.output_name], crops[split], spec)[0]
            y = is_defective(labels[split], cfg)
            s = defective_scores(logits, spec.temperature, cfg)
            row[f"{split}_auc"] = round(auc(y, s), 4)
            row[f"{split}_balanced_accuracy"] = round(binary_report(y, s, spec.threshold_defective)["balanced_accuracy"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
