"""The check that a graph averaged over test-time views computes what the single graph does
(training/views.py: check_views), on small hand-built ONNX graphs."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from training.views import add_views, check_views  # noqa: E402


def _graph(logit_scale: float = 1.0, distance_scale: float = 1.0) -> onnx.ModelProto:
    """logits = the channel means (unchanged by quarter turns), ood_distance = the sum of squares,
    each times a scale (1.0: the graph as exported)."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "ls"], ["logits"]),
        helper.make_node("Mul", ["input", "input"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "ds"], ["ood_distance"]),
    ]
    inits = [
        helper.make_tensor("ls", TensorProto.FLOAT, [], [logit_scale]),
        helper.make_tensor("ds", TensorProto.FLOAT, [], [distance_scale]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("ood_distance", TensorProto.FLOAT, ["n"]),
        ],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


BATCH = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32) * 10


def test_an_averaged_graph_that_computes_the_same_passes():
    diff = check_views(_graph(), add_views(_graph(), 4), BATCH, 4, ["ood_distance"])
    assert diff["max_abs_diff_logits"] < 1e-5 and diff["max_rel_diff_ood_distance"] < 1e-6


def test_float32_rounding_of_a_distance_passes_a_real_difference_does_not():
    # a distance off by 2e-4 of its scale (float32 rounding through a near-singular covariance) is
    # the same distance to its threshold; one off by 1 % is another graph
    assert (
        check_views(_graph(), add_views(_graph(distance_scale=1.0002), 4), BATCH, 4, ["ood_distance"])["max_rel_diff_ood_distance"] > 1e-4
    )
    with pytest.raises(RuntimeError, match="disagrees"):
        check_views(_graph(), add_views(_graph(distance_scale=1.01), 4), BATCH, 4, ["ood_distance"])


def test_logits_are_held_to_the_strict_tolerance():
    with pytest.raises(RuntimeError, match="logits"):
        check_views(_graph(), add_views(_graph(logit_scale=1.001), 4), BATCH, 4, ["ood_distance"])
