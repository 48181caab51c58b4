"""Builders of small ONNX graphs for the tests, and helpers that run them.

Every builder returns an onnx.ModelProto that passes onnx.checker; `save`
writes it where the importer can read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bonsai_mcu.codegen import render
from bonsai_mcu.importer import import_onnx
from bonsai_mcu.ir import Graph
from bonsai_mcu.plan import plan_graph
from bonsai_mcu.quantize import QuantOptions, quantize
from bonsai_mcu.reference import run_float
from bonsai_mcu.targets import load_target

# Opset of every graph unless a test passes another one.
OPSET = 13


def value_info(name: str, shape, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape) if shape is not None else None)


def initializer(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = OPSET, name: str = "test") -> onnx.ModelProto:
    """Build and check a model; inputs and outputs are (name, shape) pairs or ValueInfoProtos."""
    def infos(items):
        return [item if isinstance(item, onnx.ValueInfoProto) else value_info(*item) for item in items]

    graph = helper.make_graph(list(nodes), name, infos(inputs), infos(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset)]
    # The lowest IR version that carries this opset, so an onnxruntime older than onnx still
    # loads it, and at least 4, from which initializers need not be listed as graph inputs.
    ir_version = max(helper.find_min_ir_version_for(opsets), 4)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
    # Outputs declared without a shape get the inferred one: the checker requires a shape.
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def single_op(op: str, input_shape, output_shape=None, weights: dict | None = None, extra_inputs=(),
              opset: int = OPSET, **attrs) -> onnx.ModelProto:
    """A model of one node named 'node' reading 'x' (and constants) and writing 'y'.

    weights maps initializer names to arrays; they follow 'x' as node inputs
    in the order given, then `extra_inputs` (names, "" for an omitted input).
    """
    weights = weights or {}
    node_inputs = ["x"] + list(weights) + list(extra_inputs)
    node = helper.make_node(op, node_inputs, ["y"], name="node", **attrs)
    return make_model([node], [("x", input_shape)], [("y", output_shape)],
                      [initializer(n, a) for n, a in weights.items()], opset=opset)


def save(model: onnx.ModelProto, folder: Path, name: str = "model") -> Path:
    path = Path(folder) / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def run_onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: np.asarray(a, dtype=np.float32) for name, a in feeds.items()})


def run_ir_float(graph: Graph, logical_inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the IR's float interpreter on logical (ONNX-order) inputs; return logical outputs."""
    physical = [graph.tensors[name].to_physical(array.reshape(graph.tensors[name].logical_shape))
                for name, array in zip(graph.inputs, logical_inputs)]
    values = run_float(graph, physical)
    return [graph.tensors[name].to_logical(values[name]) for name in graph.outputs]


def random_inputs(model: onnx.ModelProto, seed: int = 0, count: int = 1) -> list[dict[str, np.ndarray]]:
    """Standard-normal float32 feeds for every non-constant graph input, batch dimension 1."""
    rng = np.random.default_rng(seed)
    constants = {init.name for init in model.graph.initializer}
    samples = []
    for _ in range(count):
        feeds = {}
        for value in model.graph.input:
            if value.name in constants:
                continue
            shape = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        samples.append(feeds)
    return samples


def compile_graph(path: Path, samples: list[list[np.ndarray]], options: QuantOptions | None = None,
                  target: str = "host", name: str | None = None):
    """Import, quantize with `samples` as calibration, plan and render one model."""
    graph = import_onnx(path, name)
    quantize(graph, options or QuantOptions(), samples)
    spec = load_target(target)
    plan = plan_graph(graph, max(spec.alignment, 4))
    files = render(graph, plan, spec, graph.name)
    return graph, plan, files
