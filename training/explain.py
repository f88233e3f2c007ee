"""The defect model's two extra outputs, added to an exported ONNX graph without touching ``logits``:

* ``defect_map`` (N, h, w): the classifier head applied at every location of the last feature map
  (the tensor the global average pool reduces), softmaxed at the calibration temperature and summed
  over the defective classes: P(defective) of each cell, a class-activation map in probability units.
* ``ood_distance`` (N,): the Mahalanobis distance of the pooled feature vector (the pool's output,
  flattened: what the head reads) to the nearest class mean of the TRAIN crops, under their shared
  within-class covariance (Ledoit-Wolf shrunk; its top ``MAX_DIMS`` principal directions kept
  exactly, the rest as one isotropic residual term: training/feature_distance.py fits it), all from
  initializers inside the graph.
* ``ood_distance_early`` (N,): the same distance, fitted the same way on the same train crops, of the
  globally averaged output of an early block (``thresholds.ood_distance_early_block`` in the config,
  ``--early-block`` here; default ``features.3``, the block bench/ood_eval.py --blocks found best for
  mobilenet_v3_small): low-level texture statistics that the pooled features average away (flat
  colour, checkerboards, noise, text). A graph without that block is refused.

Each threshold is a quantile (``thresholds.ood_distance_quantile``, default 0.99) of the VAL crops'
distances (``thresholds.ood_distance`` and ``thresholds.ood_distance_early``), chosen exactly like the
energy threshold. ``grader train`` calls :func:`add_outputs` on
every export; an existing artifact gets the same edit from its own train and val crops:

    python -m training.retrofit_explain models/apple-defect/0.1.0 [--write] [--work-dir DIR]
    python -m training.retrofit_explain models/apple-defect/0.1.0 --latency    # what the two outputs cost

Like ``training/ood_threshold.py`` it first proves that the recomputed crops are the ones the model
was calibrated on (manifest hash, refitted temperature, val AUC), then checks that the edited graph's
``logits`` are bit for bit the old graph's on every val and test crop and that the parity record
still holds; otherwise it refuses (exit status 2) and the artifact stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from grader.defect import ModelSpec, preprocess
from training.feature_distance import MAX_DIMS, DistanceModel, fit_distance, held_out_distances
from training.graph import GraphBuilder, constants, consumers, finish_graph, strip_branch, with_output

MAP_OUTPUT = "defect_map"
DISTANCE_OUTPUT = "ood_distance"
EARLY_OUTPUT = "ood_distance_early"
DEFAULT_EARLY_BLOCK = "features.3"  # mobilenet_v3_small: bench/ood_eval.py --blocks (docs/lab/defect_model.md)
#: the early block of the architectures whose modules are named otherwise (EfficientNet-Lite0's
#: fourth block: stride 8, 40 channels, as features.3 of MobileNetV3-small)
EARLY_BLOCK_BY_ARCH = {"efficientnet_lite0": "_blocks.3", "efficientnet_lite0_scratch": "_blocks.3"}
PREFIX = "explain/"  # every node, tensor and initializer this module adds: one strip removes them all

# element-wise layers a head may hold between its Gemm/MatMul layers (copied as they are)
ELEMENTWISE = {
    "Relu",
    "HardSwish",
    "HardSigmoid",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Gelu",
    "Softplus",
    "Mish",
    "Clip",
    "Identity",
    "Dropout",
    "Erf",
}
RESHAPES = {"Flatten", "Reshape", "Squeeze"}


class UnsupportedGraph(ValueError):
    """The graph's head is not one this module can apply per location: nothing was changed."""


@dataclass
class Head:
    pool: onnx.NodeProto  # GlobalAveragePool (or ReduceMean over H, W)
    feature_map: str  # (N, C, h, w): what the pool reduces
    pooled: str  # (N, C): the flattened pool output, what the head reads
    layers: list[onnx.NodeProto]  # pooled -> logits, in order
    logits: str


@dataclass
class EarlyDistance:
    """The early-block distance :func:`add_outputs` added: where it taps and what it measured."""

    block: str
    tensor: str  # the block's output (N, C, h, w), globally averaged before the distance
    threshold: float
    val_distances: np.ndarray
    distance: DistanceModel


@dataclass
class Explained:
    """What :func:`add_outputs` did and measured."""

    threshold: float
    quantile: float
    val_distances: np.ndarray
    map_shape: tuple[int, int]
    distance: DistanceModel
    head: dict[str, Any] = field(default_factory=dict)
    early: EarlyDistance | None = None


# ----------------------------------------------------------------------------- graph reading


def _is_spatial_pool(n: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    if n.op_type == "GlobalAveragePool":
        return True
    if n.op_type != "ReduceMean":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    axes = attrs.get("axes")
    if axes is None and len(n.input) > 1:
        axes = consts.get(n.input[1])
    return axes is not None and {int(a) for a in np.atleast_1d(axes)} in ({2, 3}, {-2, -1})


def find_head(model: onnx.ModelProto, logits: str = "logits") -> Head:
    """The global pool whose output the classifier head turns into ``logits``, and that head: a
    chain of Gemm / MatMul / Add layers with constant weights and element-wise activations.
    Anything else (a second consumer of the pooled features, a layer mixing in another tensor) is
    refused: the head would not be the same function at each location."""
    g = model.graph
    consts, cons = constants(g), consumers(g, PREFIX)
    if logits not in {o.name for o in g.output}:
        raise UnsupportedGraph(f"the graph has no output {logits!r}")
    found: list[Head] = []
    problems: list[str] = []
    for pool in (n for n in g.node if _is_spatial_pool(n, consts)):
        t, pooled, layers, why = pool.output[0], None, [], None
        while t != logits:
            nxt = cons.get(t, [])
            if len(nxt) != 1:
                why = f"{t!r} feeds {len(nxt)} nodes, not one head"
                break
            n = nxt[0]
            if n.input[0] != t:
                why = f"{n.op_type} {n.name!r} takes {t!r} as a second input"
                break
            if n.op_type in RESHAPES and pooled is None:
                t = n.output[0]
                continue
            pooled = pooled or t
            if n.op_type in ("Gemm", "MatMul", "Add"):
                if n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute):
                    why = f"Gemm {n.name!r} transposes its input"
                    break
                if any(i not in consts for i in n.input[1:] if i):
                    why = f"{n.op_type} {n.name!r} has a weight that is not a constant"
                    break
            elif n.op_type in ELEMENTWISE:
                if any(i not in consts for i in n.input[1:] if i):
                    why = f"{n.op_type} {n.name!r} has a parameter that is not a constant"
                    break
            else:
                why = f"{n.op_type} {n.name!r} is not a layer the head may hold (Gemm, MatMul, Add, element-wise activations)"
                break
            layers.append(n)
            t = n.output[0]
        if why is None and not any(n.op_type in ("Gemm", "MatMul") for n in layers):
            why = "no Gemm/MatMul between the pool and the logits"
        if why is None:
            found.append(Head(pool, pool.input[0], pooled or pool.output[0], layers, logits))
        else:
            problems.append(f"{pool.op_type} {pool.name!r}: {why}")
    if len(found) != 1:
        detail = "; ".join(problems) or "no GlobalAveragePool / ReduceMean over H, W in the graph"
        raise UnsupportedGraph(
            f"cannot find one global pool followed by a classifier head ending in {logits!r} ({len(found)} found): {detail}"
        )
    return found[0]


def find_block_output(model: onnx.ModelProto, block: str) -> str:
    """The output tensor of the block named ``block``: the last node (graph order, which exporters
    keep topological) whose name has ``block`` as one of its ``/``-separated parts (torch's export
    names ``/features/features.3/block/...``), or a 4-d tensor of that exact name. Raises
    UnsupportedGraph when the graph has neither."""
    nodes = [n for n in model.graph.node if not n.name.startswith(PREFIX)]
    produced = {o for n in nodes for o in n.output}
    if block in produced:
        return block
    hits = [n for n in nodes if block in n.name.split("/")]
    if not hits:
        blocks = sorted({p for n in nodes for p in n.name.split("/")[1:-1] if p.split(".")[-1].isdigit()})
        raise UnsupportedGraph(
            f"the graph has no block or tensor {block!r} for the early distance (blocks it has: {', '.join(blocks[:40]) or 'none named'})"
        )
    return hits[-1].output[0]


# ----------------------------------------------------------------------------- graph editing


def strip_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without anything :func:`add_outputs` added (the graph as it was exported)."""
    return strip_branch(model, PREFIX, (MAP_OUTPUT, DISTANCE_OUTPUT, EARLY_OUTPUT))


def _pooled_block(b: GraphBuilder, tensor: str) -> str:
    """(N, C, h, w) -> (N, C): the global average the early distance reads."""
    return b.node("Flatten", [b.node("GlobalAveragePool", [tensor])], axis=1)


def _map_branch(b: GraphBuilder, head: Head, temperature: float, defective_idx: list[int], n_classes: int) -> None:
    """defect_map: the head at each location. The feature map goes to (N·h·w, C) rows and through
    the head's own nodes (same initializers, same attributes), then softmax at T, defective sum."""
    x = b.node("Transpose", [head.feature_map], perm=[0, 2, 3, 1])
    shape = b.node("Shape", [head.feature_map])
    hw = b.node("Slice", [shape, b.const("start", np.array([2], np.int64)), b.const("end", np.array([4], np.int64))])
    channels = b.node("Slice", [shape, b.const("start", np.array([1], np.int64)), b.const("end", np.array([2], np.int64))])
    rows = b.node("Reshape", [x, b.node("Concat", [b.const("minus1", np.array([-1], np.int64)), channels], axis=0)])
    t = rows
    for n in head.layers:
        if n.op_type in ("Identity", "Dropout"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        t = b.node(n.op_type, [t, *n.input[1:]], **attrs)
    z = b.node("Div", [t, b.const("temperature", np.array(temperature, np.float32))])
    p = b.node("Softmax", [z], axis=1)
    onehot = np.zeros(n_classes, np.float32)
    onehot[defective_idx] = 1.0
    flat = b.node("MatMul", [p, b.const("defective_classes", onehot)])
    out_shape = b.node("Concat", [b.const("minus1", np.array([-1], np.int64)), hw], axis=0)
    b.node("Reshape", [flat, out_shape], output=MAP_OUTPUT)


def _distance_branch(b: GraphBuilder, pooled: str, dm: DistanceModel, output: str = DISTANCE_OUTPUT) -> None:
    d = b.node("Sub", [b.unsqueeze(pooled, [1]), b.const("class_means", dm.means.astype(np.float32))])  # (N, K, C)
    directions = b.const("directions", dm.directions.astype(np.float32))
    p = b.node("MatMul", [d, directions])  # (N, K, k)
    q = b.reduce(
        "ReduceSum", b.node("Mul", [b.node("Mul", [p, p]), b.const("inv_variances", (1.0 / dm.variances).astype(np.float32))]), [-1]
    )
    if dm.residual_variance is not None:
        back = b.node("MatMul", [p, b.node("Transpose", [directions], perm=[1, 0])])  # back in feature space
        r = b.node("Sub", [d, back])
        rr = b.reduce("ReduceSum", b.node("Mul", [r, r]), [-1])
        q = b.node("Add", [q, b.node("Mul", [rr, b.const("inv_residual_variance", np.array(1.0 / dm.residual_variance, np.float32))])])
    nearest = b.reduce("ReduceMin", q, [1])
    nonneg = b.node("Max", [nearest, b.const("zero", np.array(0.0, np.float32))])
    b.node("Sqrt", [nonneg], output=output)


# ----------------------------------------------------------------------------- running a graph
def _chunks(x: np.ndarray | Sequence[np.ndarray], spec: ModelSpec, size: int = 64):
    """Preprocessed float batches from a preprocessed array or from uint8 RGB crops."""
    for i in range(0, len(x), size):
        part = x[i : i + size]
        yield part if isinstance(part, np.ndarray) and part.dtype == np.float32 and part.ndim == 4 else preprocess(list(part), spec)


def run_graph(model: onnx.ModelProto | bytes | Path, names: list[str], x, spec: ModelSpec) -> list[np.ndarray]:
    """The named outputs of a graph on crops (uint8 RGB) or a preprocessed batch, in chunks."""
    data = (
        model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes() if isinstance(model, Path) else model
    )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for batch in _chunks(x, spec):
        for k, v in enumerate(sess.run(names, {spec.input_name: batch})):
            parts[k].append(v)
    return [np.concatenate(p) if p else np.zeros((0,)) for p in parts]


def add_outputs(
    onnx_in: Path,
    onnx_out: Path,
    spec: ModelSpec,
    train_crops,
    train_labels: np.ndarray,
    val_crops,
    quantile: float = 0.99,
    max_dims: int = MAX_DIMS,
    early_block: str | None = DEFAULT_EARLY_BLOCK,
    train_groups: list[str] | None = None,
) -> Explained:
    """Edit the graph at ``onnx_in`` (any earlier edit stripped first) and write it to ``onnx_out``:
    ``defect_map`` at ``spec.temperature`` over ``spec.defective_classes``, ``ood_distance`` fitted
    on the train crops' pooled features and, unless ``early_block`` is None, ``ood_distance_early``
    fitted the same way on the train crops' globally averaged ``early_block`` output; each threshold
    the ``quantile`` of the val crops'. Crops are uint8 RGB crops or batches preprocessed as ``spec``
    says. Raises UnsupportedGraph (nothing written) for a head it cannot apply per location or a graph
    without ``early_block``, RuntimeError when the edited graph's logits are not bit for bit the
    original's on the val crops.

    With ``train_groups`` (the session of each train crop), the distances are fitted on every train
    crop and each threshold is the ``quantile`` of the held-out distances (:func:`held_out_distances`)
    instead of the val crops': for a head fitted on train and val sessions together
    (``train.probe_fit: cross_session``), whose val crops are no longer unseen."""
    original = strip_outputs(onnx.load(str(onnx_in)))
    head = find_head(original, spec.output_name)
    pb = GraphBuilder(original, PREFIX)
    early_tensor = early_pooled = None
    if early_block is not None:
        early_tensor = find_block_output(original, early_block)
        early_pooled = _pooled_block(pb, early_tensor)
    probe = with_output(finish_graph(original, pb, {}), head.pooled, *([early_pooled] if early_pooled else []))
    feat_names = [head.pooled, *([early_pooled] if early_pooled else [])]
    train_out = run_graph(probe, feat_names, train_crops, spec)
    train_feats = train_out[0].reshape(len(train_out[0]), -1)
    if len(train_feats) != len(train_labels):
        raise ValueError(f"{len(train_feats)} train crops but {len(train_labels)} labels")
    dm = fit_distance(train_feats, train_labels, max_dims)
    dm_early = None if early_pooled is None else fit_distance(train_out[1].reshape(len(train_out[1]), -1), train_labels, max_dims)

    b = GraphBuilder(original, PREFIX)
    defective_idx = [spec.classes.index(c) for c in spec.defective_classes]
    _map_branch(b, head, spec.temperature, defective_idx, len(spec.classes))
    _distance_branch(b, head.pooled, dm)
    outputs = {MAP_OUTPUT: ["batch", "map_h", "map_w"], DISTANCE_OUTPUT: ["batch"]}
    if dm_early is not None:
        _distance_branch(b, _pooled_block(b, early_tensor), dm_early, EARLY_OUTPUT)
        outputs[EARLY_OUTPUT] = ["batch"]
    edited = finish_graph(original, b, outputs)

    before_logits, *val_feats = run_graph(probe, [spec.output_name, *feat_names], val_crops, spec)
    logits, maps, *dists = run_graph(edited, [spec.output_name, MAP_OUTPUT, *list(outputs)[1:]], val_crops, spec)
    if not np.array_equal(before_logits, logits):
        raise RuntimeError(f"the edited graph's logits differ from the original's (max |Δ| {np.abs(before_logits - logits).max():.3g})")
    for name, model_, feats, got in zip(list(outputs)[1:], [dm, dm_early], val_feats, dists):
        want = model_.distance(feats.reshape(len(feats), -1))
        if len(want) and not np.allclose(got, want, rtol=1e-3, atol=1e-3):
            raise RuntimeError(f"{name} in the graph disagrees with its fit (max |Δ| {np.abs(got - want).max():.3g})")
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(edited, str(onnx_out))
    head_info = {
        "pool": head.pool.name,
        "feature_map": head.feature_map,
        "pooled_features": head.pooled,
        "head_layers": [n.op_type for n in head.layers],
    }
    if train_groups is not None:  # thresholds on the held-out sessions' distances
        dists = [held_out_distances(f.reshape(len(f), -1), train_labels, train_groups, max_dims) for f in train_out]
    early = None
    if dm_early is not None:
        early = EarlyDistance(
            block=str(early_block),
            tensor=str(early_tensor),
            threshold=float(np.quantile(dists[1], quantile)),
            val_distances=dists[1],
            distance=dm_early,
        )
    return Explained(
        threshold=float(np.quantile(dists[0], quantile)),
        quantile=quantile,
        val_distances=dists[0],
        map_shape=(int(maps.shape[1]), int(maps.shape[2])),
        distance=dm,
        head=head_info,
        early=early,
    )


def _distance_record(dm, meta: dict[str, Any], meaning: str, **where: str) -> dict[str, Any]:
    """metadata.json ``outputs`` entry of a fitted feature distance (``where``: the block it reads)."""
    return {
        "shape": ["N"],
        "meaning": meaning,
        **where,
        "fitted_on": f"train crops ({dm.n_train})",
        "dims": int(dm.directions.shape[1]),
        "feature_dims": int(dm.directions.shape[0]),
        "shrinkage": round(dm.shrinkage, 6),
        "residual_term": dm.residual_variance is not None,
        "classes": [meta["classes"][c] for c in dm.classes],
    }


def update_metadata(
    meta: dict[str, Any],
    ex: Explained,
    shares: dict[str, float],
    how: str = "",
    early_shares: dict[str, float] | None = None,
    held_out: bool = False,
) -> dict[str, Any]:
    """Write the outputs' description, the thresholds and their rules, and the per-split shares over them
    (``held_out``: the thresholds were read on held-out sessions' distances, not the val crops')."""
    dm = ex.distance
    on = "held-out train and val sessions' (each under a fit without its session)" if held_out else "val crops'"
    meta["outputs"] = {
        MAP_OUTPUT: {
            "shape": ["N", *ex.map_shape],
            "meaning": "P(defective) per location: the classifier head applied at each cell of the last feature map "
            "(the tensor the global average pool reduces), softmax at the calibration temperature, summed over "
            "the defective classes; cells tile the model's square fruit crop, rows top to bottom",
            "temperature": meta["calibration"]["temperature"],
            **ex.head,
        },
        DISTANCE_OUTPUT: _distance_record(
            dm,
            meta,
            "Mahalanobis distance of the pooled feature vector to the nearest train class mean, under the train "
            "crops' shared within-class covariance (Ledoit-Wolf shrunk; exact in its top principal directions, "
            "one variance for the rest)",
        ),
    }
    meta["thresholds"]["ood_distance"] = ex.threshold
    meta["thresholds"]["ood_distance_rule"] = (
        f"quantile {ex.quantile:g} of the {on} ood_distance (Mahalanobis distance of the pooled features to the "
        f"train features); above it a crop is out of distribution{how}"
    )
    for split, share in shares.items():
        if isinstance(meta.get("metrics", {}).get(split), dict):
            meta["metrics"][split]["ood_distance_share"] = share
    for k in ("ood_distance_early", "ood_distance_early_rule"):
        meta["thresholds"].pop(k, None)
    for split in meta.get("metrics", {}).values():
        if isinstance(split, dict):
            split.pop("ood_distance_early_share", None)
    if ex.early is not None:
        de = ex.early.distance
        meta["outputs"][EARLY_OUTPUT] = _distance_record(
            de,
            meta,
            f"Mahalanobis distance of the globally averaged output of the early block {ex.early.block} to the "
            "nearest train class mean, under the train crops' shared within-class covariance (fitted as "
            f"{DISTANCE_OUTPUT}): texture statistics the pooled features average away",
            block=ex.early.block,
            block_output=ex.early.tensor,
        )
        meta["thresholds"]["ood_distance_early"] = ex.early.threshold
        meta["thresholds"]["ood_distance_early_rule"] = (
            f"quantile {ex.quantile:g} of the {on} ood_distance_early (Mahalanobis distance of the globally averaged "
            f"output of block {ex.early.block} to the train crops'); above it a crop is out of distribution{how}"
        )
        for split, share in (early_shares or {}).items():
            if isinstance(meta.get("metrics", {}).get(split), dict):
                meta["metrics"][split]["ood_distance_early_share"] = share
    return meta


# ----------------------------------------------------------------------------- existing artifacts
def early_block_of(cfg: dict[str, Any]) -> str | None:
    """The config's early block (``thresholds.ood_distance_early_block``; null: no early distance),
    else the architecture's (``EARLY_BLOCK_BY_ARCH``, else ``features.3``)."""
    th = cfg.get("thresholds") or {}
    if "ood_distance_early_block" in th:
        return th["ood_distance_early_block"]
    return EARLY_BLOCK_BY_ARCH.get((cfg.get("model") or {}).get("arch", ""), DEFAULT_EARLY_BLOCK)
