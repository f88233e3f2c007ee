"""Test-time views: a defect model that averages its logits over symmetries of the fruit crop.

A fruit on a belt has no up and no handedness, so the model's opinion of it should not depend on
how the crop happens to be turned; trained with flips and rotations, a network still moves a little
under them, and the average over the views of one crop is a steadier opinion (bench/tta_eval.py
measured it; docs/lab/defect_model.md has the figures).

The views live **inside the ONNX graph** (:func:`add_views`), so everything that runs the artifact —
the service, ``grader evaluate``, ``grader compare``, the benchmarks — computes the same average
without knowing about it: the graph stacks the views of its input batch (N crops -> V·N rows), runs
the network once on them, and returns the mean of the V logits of each crop. The extra outputs of
training/explain.py (``defect_map``, ``ood_distance``, ``ood_distance_early``) read the crop as given
(the first N rows), so the map is drawn over the picture the inspector sees. Torch computes the same
average with :class:`ViewAverage`: training calibrates and picks thresholds on it, and the export is
checked against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from training.graph import GraphBuilder

#: the views, in graph order; a model with V views uses the first V of the list that V names
SYMMETRIES = ("identity", "turn 90", "turn 180", "turn 270", "flip left-right", "flip up-down", "transpose", "anti-transpose")
VIEW_SETS = {1: SYMMETRIES[:1], 4: SYMMETRIES[:4], 8: SYMMETRIES}
PREFIX = "views__"


def view_names(views: int) -> tuple[str, ...]:
    if views not in VIEW_SETS:
        raise ValueError(
            f"test-time views must be one of {sorted(VIEW_SETS)} (the crop alone, its four quarter turns, "
            f"or all eight symmetries of the square), got {views!r}"
        )
    return VIEW_SETS[views]


def numpy_view(x: np.ndarray, name: str) -> np.ndarray:
    """One symmetry of a batch (N, C, H, W) of square images, rows and columns being axes 2 and 3."""
    t = np.swapaxes(x, 2, 3)
    return {
        "identity": x,
        "turn 90": np.rot90(x, 1, (2, 3)),
        "turn 180": np.flip(x, (2, 3)),
        "turn 270": np.rot90(x, 3, (2, 3)),
        "flip left-right": np.flip(x, 3),
        "flip up-down": np.flip(x, 2),
        "transpose": t,
        "anti-transpose": np.flip(t, (2, 3)),
    }[name]


def metadata_record(views: int) -> dict[str, Any]:
    return {
        "count": views,
        "views": list(view_names(views)),
        "where": "inside model.onnx (training/views.py): the graph stacks these views of each preprocessed crop, runs the network "
        "once and returns the mean of their logits; defect_map and the ood distances read the crop as given",
    }


# ----------------------------------------------------------------------------- torch
def torch_view(x, name: str):
    import torch

    t = x.transpose(2, 3)
    return {
        "identity": lambda: x,
        "turn 90": lambda: torch.rot90(x, 1, (2, 3)),
        "turn 180": lambda: torch.flip(x, (2, 3)),
        "turn 270": lambda: torch.rot90(x, 3, (2, 3)),
        "flip left-right": lambda: torch.flip(x, (3,)),
        "flip up-down": lambda: torch.flip(x, (2,)),
        "transpose": lambda: t,
        "anti-transpose": lambda: torch.flip(t, (2, 3)),
    }[name]()


def ViewAverage(model, views: int):  # noqa: N802 - a factory of an nn.Module, named as the class it builds
    """``model`` whose logits are averaged over the first ``views`` symmetries (torch's side of
    :func:`add_views`). With one view, ``model`` itself."""
    from torch import nn

    names = view_names(views)
    if views == 1:
        return model

    class _ViewAverage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return sum(self.model(torch_view(x, n)) for n in names) / len(names)

    return _ViewAverage()


# ----------------------------------------------------------------------------- the graph edit
class _Nodes(GraphBuilder):
    """The graph edit's builder: explain's, with the flips and turns of an NCHW tensor."""

    def flip(self, x: str, axes: list[int]) -> str:
        big = np.iinfo(np.int64).max
        return self.node(
            "Slice",
            [
                x,
                self.const("starts", np.full(len(axes), -1, np.int64)),
                self.const("ends", np.full(len(axes), -big, np.int64)),
                self.const("axes", np.array(axes, np.int64)),
                self.const("steps", np.full(len(axes), -1, np.int64)),
            ],
        )

    def view(self, x: str, name: str, transposed: list[str]) -> str:
        if name == "identity":
            return x
        if name in ("turn 180", "flip left-right", "flip up-down"):
            return self.flip(x, {"turn 180": [2, 3], "flip left-right": [3], "flip up-down": [2]}[name])
        if not transposed:
            transposed.append(self.node("Transpose", [x], perm=[0, 1, 3, 2]))
        t = transposed[0]
        # np.rot90(x, 1, (2, 3)) is the transpose flipped up-down, rot90(x, 3) the transpose flipped left-right
        return {
            "transpose": lambda: t,
            "turn 90": lambda: self.flip(t, [2]),
            "turn 270": lambda: self.flip(t, [3]),
            "anti-transpose": lambda: self.flip(t, [2, 3]),
        }[name]()


def _ancestors(graph: onnx.GraphProto, output: str) -> set[int]:
    """Indices of the nodes that ``output`` depends on."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    seen: set[int] = set()
    todo = [output]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in seen:
            continue
        seen.add(i)
        todo.extend(graph.node[i].input)
    return seen


def add_views(model: onnx.ModelProto, views: int, input_name: str = "input", logits: str = "logits") -> onnx.ModelProto:
    """A copy of ``model`` that averages ``logits`` over ``views`` symmetries of its input, the
    other outputs computed on the input as given. ``model`` must be a single-view graph."""
    names = view_names(views)
    if any(n.name.startswith(PREFIX) for n in model.graph.node):
        raise ValueError("the graph already averages over test-time views")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if views == 1:
        return m
    g = m.graph
    core = _ancestors(g, logits)  # the network itself: every node the logits need
    core_tensors = {o for i in core for o in g.node[i].output}
    b = _Nodes(m, PREFIX)
    transposed: list[str] = []
    stacked = b.node("Concat", [b.view(input_name, v, transposed) for v in names], axis=0)
    n_view_nodes = len(b.nodes)
    n = b.node("Slice", [b.node("Shape", [input_name]), b.const("zero", np.array([0], np.int64)), b.const("one", np.array([1], np.int64))])
    all_logits = f"{PREFIX}logits_all"
    sliced: dict[str, str] = {}
    extra: list[onnx.NodeProto] = []
    for i, node in enumerate(g.node):
        if i in core:
            for k, x in enumerate(node.input):
                if x == input_name:
                    node.input[k] = stacked
            for k, y in enumerate(node.output):
                if y == logits:
                    node.output[k] = all_logits
        else:  # an extra output's branch: it reads the first N rows, the crops as given
            for k, x in enumerate(node.input):
                if x == input_name:
                    continue
                if x in core_tensors:
                    if x not in sliced:
                        sliced[x] = b.node(
                            "Slice", [x, b.const("zero", np.array([0], np.int64)), n, b.const("axis0", np.array([0], np.int64))]
                        )
                    node.input[k] = sliced[x]
            extra.append(node)
    classes = b.node(
        "Slice", [b.node("Shape", [all_logits]), b.const("one", np.array([1], np.int64)), b.const("two", np.array([2], np.int64))]
    )
    shape = b.node("Concat", [b.const("views", np.array([views, -1], np.int64)), classes], axis=0)
    per_view = b.node("Reshape", [all_logits, shape])
    b.nodes.append(helper.make_node("Identity", [b.reduce("ReduceMean", per_view, [0])], [logits], name=b.name("Identity")))
    # topological order: the views, the network, then the average, the slices and the branches
    ordered = [*b.nodes[:n_view_nodes], *(nd for i, nd in enumerate(g.node) if i in core), *b.nodes[n_view_nodes:], *extra]
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(b.inits)
    del g.value_info[:]  # shapes inferred for one view no longer hold for the stacked rows
    onnx.checker.check_model(m)
    return m


#: how far the averaged graph's other outputs (CNN map, feature distances) may differ from the single
#: graph's, relative to their scale. The averaged graph runs the batch stacked with its views, and ONNX
#: Runtime's kernels for another batch size round float32 differently; a Mahalanobis distance through
#: the inverse of a near-singular feature covariance (a network that learned little) magnifies that to
#: ~1e-4 (seen: 7.2e-5), far below anything its threshold can tell apart
OUTPUTS_REL_TOLERANCE = 1e-3


def check_views(
    single: onnx.ModelProto,
    averaged: onnx.ModelProto,
    batch: np.ndarray,
    views: int,
    outputs: list[str],
    input_name: str = "input",
    logits: str = "logits",
    tolerance: float = 1e-5,
    outputs_tolerance: float = OUTPUTS_REL_TOLERANCE,
) -> dict[str, float]:
    """Run both graphs on ``batch`` (preprocessed, NCHW): the averaged graph's logits must be the
    mean of the single graph's over the numpy views of the batch (within ``tolerance``), and its
    other ``outputs`` the single graph's on the batch itself (within ``outputs_tolerance`` of their
    scale). Returns the largest differences; raises past either."""
    import onnxruntime as ort

    def session(mp: onnx.ModelProto):
        return ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])

    one, avg = session(single), session(averaged)
    want = np.mean([one.run([logits], {input_name: np.ascontiguousarray(numpy_view(batch, v))})[0] for v in view_names(views)], axis=0)
    got, *extras = avg.run([logits, *outputs], {input_name: batch})
    base = one.run(outputs, {input_name: batch}) if outputs else []
    diff = {"max_abs_diff_logits": float(np.abs(got - want).max())}
    for name, a, e in zip(outputs, base, extras):  # relative to the output's scale (distances run to the hundreds)
        diff[f"max_rel_diff_{name}"] = float(np.abs(a - e).max() / max(1.0, float(np.abs(a).max())))
    limits = {k: tolerance if k == "max_abs_diff_logits" else outputs_tolerance for k in diff}
    if any(not np.isfinite(v) or v > limits[k] for k, v in diff.items()):
        raise RuntimeError(
            f"the averaged graph disagrees with the single-view graph: {diff} "
            f"(allowed: logits {tolerance:g}, other outputs {outputs_tolerance:g} of their scale)"
        )
    return diff


# ----------------------------------------------------------------------------- an existing artifact
def set_map_temperature(model: onnx.ModelProto, temperature: float) -> int:
    """Set the calibration temperature the ``defect_map`` branch (training/explain.py) divides by;
    returns how many constants were set (0 for a graph without the map)."""
    from training.explain import PREFIX as EXPLAIN

    k = 0
    for init in model.graph.initializer:
        if init.name.startswith(f"{EXPLAIN}temperature"):
            init.CopyFrom(numpy_helper.from_array(np.array(temperature, np.float32), init.name))
            k += 1
    return k
