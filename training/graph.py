"""ONNX graph editing shared by the edits an artifact's graph receives (training/explain.py's
explanation outputs, training/views.py's test-time views, training/fruit_check.py's fruit head):
a builder of prefixed nodes, and stripping or finishing an edit."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def consumers(graph: onnx.GraphProto, skip_prefix: str | None = None) -> dict[str, list[onnx.NodeProto]]:
    """{tensor: the nodes reading it}, leaving out the nodes named under ``skip_prefix``."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        if skip_prefix and n.name.startswith(skip_prefix):  # an earlier edit's branches
            continue
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def opset_of(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


class GraphBuilder:
    """New nodes and initializers for a graph, every name under ``prefix`` (each edit its own: the
    explanation outputs, the views, the fruit check), so that one strip removes an edit whole."""

    def __init__(self, model: onnx.ModelProto, prefix: str) -> None:
        self.model, self.opset, self.prefix = model, opset_of(model), prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def name(self, what: str) -> str:
        self.k += 1
        return f"{self.prefix}{what}_{self.k}"

    def const(self, what: str, value: np.ndarray) -> str:
        n = self.name(what)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def reduce(self, op: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        # ReduceSum takes axes as an input from opset 13, the other reductions from opset 18
        if self.opset >= (13 if op == "ReduceSum" else 18):
            return self.node(op, [x, self.const("axes", np.array(axes, np.int64))], keepdims=keepdims)
        return self.node(op, [x], axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.node("Unsqueeze", [x, self.const("axes", np.array(axes, np.int64))])
        return self.node("Unsqueeze", [x], axes=axes)


def strip_branch(model: onnx.ModelProto, prefix: str, outputs: tuple[str, ...]) -> onnx.ModelProto:
    """A copy without the nodes, initializers and value infos named under ``prefix`` and without the
    graph outputs ``outputs`` (a branch an edit added)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = [n for n in g.node if not n.name.startswith(prefix)]
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if not i.name.startswith(prefix)]
    del g.initializer[:]
    g.initializer.extend(inits)
    outs = [o for o in g.output if o.name not in outputs and not o.name.startswith(prefix)]
    del g.output[:]
    g.output.extend(outs)
    vi = [v for v in g.value_info if not v.name.startswith(prefix) and v.name not in outputs]
    del g.value_info[:]
    g.value_info.extend(vi)
    return m


def with_output(model: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        if name not in {o.name for o in m.graph.output}:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def finish_graph(model: onnx.ModelProto, b: GraphBuilder, outputs: dict[str, list]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node.extend(b.nodes)
    m.graph.initializer.extend(b.inits)
    for name, shape in outputs.items():
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    onnx.checker.check_model(m)
    return m
