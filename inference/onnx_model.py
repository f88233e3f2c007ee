"""The ONNX Runtime adapter of the core's DefectModel protocol.

Reads its preprocessing from the artifact's metadata.json; the session is created once, with
threads set for the machine, and warmed up before the service reports ready.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

# ONNX Runtime's telemetry SDK otherwise leaves a session file (.ses) in the system's temporary
# folder at import: the service writes nothing outside its data dir, and phones nowhere
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from grader.defect import ModelOutputs, evidence_from_outputs, parity_probe, preprocess
from grader.errors import InvalidModelArtifact
from grader.records import DefectEvidence
from inference.metadata import read_spec

#: the graph's optional outputs (training/explain.py adds them), requested when the graph has them
EXTRA_OUTPUTS = ("defect_map", "ood_distance", "ood_distance_early", "fruit_score")


def resolve_model_dir(path: Path) -> Path:
    """An artifact directory itself, or a directory whose DEFAULT file names one (relative)."""
    path = Path(path)
    if (path / "model.onnx").exists():
        return path
    pointer = path / "DEFAULT"
    if pointer.exists():
        target = path / pointer.read_text().strip()
        if (target / "model.onnx").exists():
            return target
    raise InvalidModelArtifact(f"no model artifact at {path}: expected model.onnx + metadata.json, or a DEFAULT pointer")


class OnnxDefectModel:
    def __init__(self, model_dir: Path, threads: int = 0) -> None:
        self.model_dir = resolve_model_dir(model_dir)
        meta_path = self.model_dir / "metadata.json"
        if not meta_path.exists():
            raise InvalidModelArtifact(f"{self.model_dir} has model.onnx but no metadata.json")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidModelArtifact(f"{meta_path}: not valid JSON: {exc}") from exc
        self.meta = meta
        self.spec = read_spec(meta)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        onnx_bytes = (self.model_dir / "model.onnx").read_bytes()
        self.sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        try:
            self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InvalidModelArtifact(f"{self.model_dir}/model.onnx cannot be loaded: {exc}") from exc
        self._check_graph()
        outputs = {o.name for o in self.session.get_outputs()}
        self.extra_outputs = tuple(n for n in EXTRA_OUTPUTS if n in outputs)
        if self.spec.ood_distance_threshold is not None and "ood_distance" not in outputs:
            raise InvalidModelArtifact("metadata.json sets thresholds.ood_distance but the graph has no ood_distance output")
        if self.spec.fruit_threshold is not None and "fruit_score" not in outputs:
            raise InvalidModelArtifact("metadata.json sets thresholds.fruit but the graph has no fruit_score output")
        if self.spec.ood_distance_early_threshold is not None and "ood_distance_early" not in outputs:
            raise InvalidModelArtifact("metadata.json sets thresholds.ood_distance_early but the graph has no ood_distance_early output")
        want_t = (meta.get("outputs") or {}).get("defect_map", {}).get("temperature")
        if "defect_map" in outputs and want_t is not None and abs(float(want_t) - self.spec.temperature) > 1e-6 * self.spec.temperature:
            raise InvalidModelArtifact(
                f"the graph's defect_map was built at temperature {want_t}, the metadata calibrates at "
                f"{self.spec.temperature}: rerun python -m training.retrofit_explain on the artifact"
            )
        try:
            self.warm_up()
        except InvalidModelArtifact:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors running the graph
            raise InvalidModelArtifact(
                f"model.onnx fails on a batch of the service's input: {type(exc).__name__}: {str(exc)[:400]}"
            ) from None

    def _check_graph(self) -> None:
        """The graph takes what the service feeds it and gives what it reads, or InvalidModelArtifact
        naming the difference: one float32 NCHW input with 3 (RGB) channels, a free batch axis and
        the metadata's input_size; a float output of one logit per class."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.spec.input_name not in inputs:
            raise InvalidModelArtifact(f"model has no input {self.spec.input_name!r} (has {sorted(inputs)})")
        if len(inputs) != 1:
            raise InvalidModelArtifact(f"model has {len(inputs)} inputs {sorted(inputs)}; the service feeds one, {self.spec.input_name!r}")
        inp = inputs[self.spec.input_name]
        if inp.type != "tensor(float)":
            raise InvalidModelArtifact(f"input dtype: {self.spec.input_name!r} is {inp.type}, the service feeds tensor(float) (float32)")
        shape = inp.shape
        if len(shape) != 4:
            raise InvalidModelArtifact(f"input shape {shape}: the service feeds a 4-d NCHW batch")
        if isinstance(shape[1], int) and shape[1] != 3:
            raise InvalidModelArtifact(f"input channels: the graph takes {shape[1]} channels, the service feeds 3 (RGB)")
        if isinstance(shape[0], int):
            raise InvalidModelArtifact(
                f"batch dimension: the graph's batch axis is fixed at {shape[0]}; the service batches crops, "
                "export it with a dynamic batch axis"
            )
        if [shape[2], shape[3]] != list(self.spec.input_size):
            raise InvalidModelArtifact(f"model input shape {shape} does not match metadata input_size {self.spec.input_size}")
        outputs = {o.name: o for o in self.session.get_outputs()}
        if self.spec.output_name not in outputs:
            raise InvalidModelArtifact(f"outputs: model has no output {self.spec.output_name!r} (has {sorted(outputs)})")
        out = outputs[self.spec.output_name]
        if out.type not in ("tensor(float)", "tensor(double)"):
            raise InvalidModelArtifact(f"outputs: {self.spec.output_name!r} is {out.type}, expected float logits")
        if len(out.shape) != 2 or (isinstance(out.shape[1], int) and out.shape[1] != len(self.spec.classes)):
            raise InvalidModelArtifact(
                f"outputs: {self.spec.output_name!r} has shape {out.shape}, expected (batch, "
                f"{len(self.spec.classes)}) for the classes {list(self.spec.classes)}"
            )

    def check_parity(self) -> float:
        """Rerun the parity probe recorded in metadata.json; raise when the graph's logits differ
        from the trained network's by more than the recorded tolerance. Returns the difference."""
        rec = self.meta.get("parity")
        if not isinstance(rec, dict) or "logits" not in rec:
            raise InvalidModelArtifact("metadata.json has no parity record (logits of the parity probe): export it with grader train")
        try:
            want = np.asarray(rec["logits"], np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidModelArtifact(f"parity record's logits are not a table of numbers: {exc}") from None
        try:
            got = self.run(parity_probe(self.spec.input_size)).logits
        except InvalidModelArtifact:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors running the graph
            raise InvalidModelArtifact(f"model.onnx fails on the parity probe: {type(exc).__name__}: {str(exc)[:400]}") from None
        if got.shape != want.shape:
            raise InvalidModelArtifact(f"parity record has shape {want.shape}, the graph gives {got.shape}")
        diff = float(np.abs(got - want).max())
        if not diff <= float(rec.get("tolerance", 1e-3)):
            raise InvalidModelArtifact(
                f"model.onnx does not reproduce its recorded parity logits (max |Δ| {diff:.2e} > "
                f"{rec.get('tolerance', 1e-3)}): the graph is not the one that was exported"
            )
        return diff

    def warm_up(self) -> None:
        h, w = self.spec.input_size
        self.run(np.zeros((1, 3, h, w), np.float32))

    def run(self, batch: np.ndarray) -> ModelOutputs:
        """The batch's logits, with ``defect_map``, ``ood_distance`` and ``ood_distance_early`` where the graph has them."""
        got = self.session.run([self.spec.output_name, *self.extra_outputs], {self.spec.input_name: batch})
        out, extra = got[0], dict(zip(self.extra_outputs, got[1:]))
        if out.shape != (len(batch), len(self.spec.classes)):
            raise InvalidModelArtifact(f"model output shape {out.shape} does not match {len(self.spec.classes)} classes")
        dmap, dist, early, fruit = (
            extra.get("defect_map"),
            extra.get("ood_distance"),
            extra.get("ood_distance_early"),
            extra.get("fruit_score"),
        )
        if dmap is not None and (dmap.ndim != 3 or len(dmap) != len(batch)):
            raise InvalidModelArtifact(f"model output defect_map has shape {dmap.shape}, expected ({len(batch)}, h, w)")
        for name, v in (("ood_distance", dist), ("ood_distance_early", early), ("fruit_score", fruit)):
            if v is not None and v.shape != (len(batch),):
                raise InvalidModelArtifact(f"model output {name} has shape {v.shape}, expected ({len(batch)},)")
        return ModelOutputs(out, dmap, dist, early, fruit)

    def predict(self, crops: Sequence[np.ndarray]) -> list[DefectEvidence]:
        if not crops:
            return []
        return evidence_from_outputs(self.run(preprocess(crops, self.spec)), self.spec)
