"""Import stage: an ONNX file becomes an IR graph.

The pass runs onnx.checker and shape inference, folds constants, folds
BatchNormalization and bias additions into the preceding Conv or Gemm, fuses
ReLU and Clip into the op that produces their input, drops Identity and
Dropout, and decides the physical layout of every tensor once: spatial
tensors are channels-last. Every unsupported construct is collected and
reported together in one error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from . import BonsaiError
from .formats import QUANTIZER_OPS, FormatImporter
from .ir import Graph, Node, Tensor

log = logging.getLogger(__name__)

# Unary elementwise ops that become a 256-entry lookup table in int8.
LUT_OPS = ("Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Softplus")


# The int8 softmax sums Q16 exponentials in 32 bits: rows of at most 16384 values.
SOFTMAX_MAX_ROW = 16384


class UnsupportedModelError(BonsaiError):
    """The model uses constructs that bonsai-mcu cannot compile.

    `problems` lists (op_type, node_name, reason) for each of them.
    """

    def __init__(self, path: str, problems: list[tuple[str, str, str]]):
        self.problems = problems
        items = "; ".join(f"{op} node '{name}': {reason}" for op, name, reason in problems)
        noun = "construct" if len(problems) == 1 else "constructs"
        super().__init__(f"{path}: {len(problems)} unsupported {noun}: {items}")


@dataclass
class _Value:
    """An ONNX tensor name bound to an IR tensor (the same bytes, maybe another view)."""

    tensor: str


class _Skip(Exception):
    """Raised by an op handler after it recorded a problem."""


def _channels_last(rank: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, rank)) + (1,)


def _same_data_order(logical_shape, perm_a, perm_b) -> bool:
    """Tell whether two physical orders of one logical tensor lay its bytes out alike.

    Axes of size 1 do not move data, so only the order of the others counts.
    """
    def order(perm):
        return [axis for axis in perm if logical_shape[axis] != 1]
    return order(perm_a) == order(perm_b)


def _sanitize(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _check_names(model: onnx.ModelProto, path: Path) -> None:
    """Reject names that are not valid UTF-8: protobuf hands them over as bytes, not str."""
    graph = model.graph
    names = [value.name for value in list(graph.input) + list(graph.output) + list(graph.value_info)]
    names += [init.name for init in graph.initializer]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output]
        names += [attribute.name for attribute in node.attribute]
    for name in names:
        if not isinstance(name, str):
            raise BonsaiError(f"{path}: not a valid ONNX file (name {name!r} is not valid UTF-8)")


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise BonsaiError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning and friends
        raise BonsaiError(f"{path}: not a valid ONNX file ({type(error).__name__}: {error})") from error
    if not model.graph.node and not model.graph.output:
        raise BonsaiError(f"{path}: not a valid ONNX file (the graph is empty or the file is truncated)")
    _check_names(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        hint = ""
        if re.search(r"attribute: axis for operator (QuantizeLinear|DequantizeLinear)", first_line):
            # onnxruntime's quantize_static with per_channel=True writes axis even
            # when the float model's opset is below 13, where axis does not exist.
            hint = ("; per-axis QuantizeLinear and DequantizeLinear need opset 13 or later: convert the float "
                    "model with onnx.version_converter.convert_version(model, 13) before quantizing it")
        raise BonsaiError(f"{path}: ONNX checker rejected the model: {first_line}{hint}") from error
    except ValueError as error:  # names that are not UTF-8, messages the C++ checker cannot parse back
        raise BonsaiError(f"{path}: not a valid ONNX file (onnx.checker cannot read it: {error})") from error
    return model


def _fix_input_shapes(model: onnx.ModelProto, path: Path) -> None:
    """Give symbolic batch dimensions the value 1; reject other dynamic dimensions."""
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise BonsaiError(f"{path}: input '{value.name}' is not a tensor")
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            raise BonsaiError(f"{path}: input '{value.name}' has no shape; export the model with static shapes")
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if axis == 0:
                dim.Clear()
                dim.dim_value = 1
                continue
            raise BonsaiError(
                f"{path}: input '{value.name}' has a dynamic dimension at axis {axis} "
                f"('{dim.dim_param}'); export the model with static shapes"
            )


class _Importer:
    def __init__(self, model: onnx.ModelProto, path: Path, name: str):
        self.model = model
        self.path = path
        self.graph_name = name
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts: dict[str, np.ndarray] = {}
        self.env: dict[str, _Value] = {}
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.problems: list[tuple[str, str, str]] = []
        self.dead: set[str] = set()
        self.consumer_count: dict[str, int] = {}
        self.graph_outputs = {out.name for out in model.graph.output}
        self.inferred_shapes: dict[str, tuple[int, ...]] = {}
        self.counter = 0
        self.formats = FormatImporter(self)

    # -- helpers ---------------------------------------------------------

    def new_tensor(self, hint: str, shape, perm=()) -> str:
        name = f"t{self.counter}_{_sanitize(hint)[:40]}"
        self.counter += 1
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), tuple(perm))
        return name

    def problem(self, node: onnx.NodeProto, reason: str) -> _Skip:
        self.problems.append((node.op_type, node.name or node.output[0], reason))
        return _Skip()

    def const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or not node.input[index]:
            raise self.problem(node, f"{what} is missing")
        name = node.input[index]
        if name not in self.consts:
            raise self.problem(node, f"{what} '{name}' must be a constant initializer")
        return self.consts[name]

    def optional_const(self, node, index) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        if node.input[index] not in self.consts:
            raise self.problem(node, f"input '{node.input[index]}' must be a constant initializer")
        return self.consts[node.input[index]]

    def value(self, node: onnx.NodeProto, index: int = 0) -> Tensor:
        name = node.input[index]
        if name in self.consts:
            raise self.problem(node, f"constant input '{name}' where a computed tensor is expected")
        return self.tensors[self.env[name].tensor]

    def fusable_producer(self, onnx_input: str, ops: tuple[str, ...]) -> Node | None:
        """Return the IR node that produced `onnx_input` if this consumer may fuse into it."""
        if self.consumer_count.get(onnx_input, 0) != 1 or onnx_input in self.graph_outputs:
            return None
        if onnx_input not in self.env:
            return None
        tensor = self.env[onnx_input].tensor
        # Identity and Dropout bind several ONNX names to one IR tensor: count every reader of each.
        names = [name for name, value in self.env.items() if value.tensor == tensor]
        if any(name in self.graph_outputs for name in names):
            return None
        if sum(self.consumer_count.get(name, 0) for name in names) - len(names) + 1 != 1:
            return None
        for node in reversed(self.nodes):
            if tensor in node.outputs:
                if node.op in ops and node.outputs[0] == tensor and len(self.consumers_ir(tensor)) == 0:
                    return node
                return None
        return None

    def consumers_ir(self, tensor: str) -> list[Node]:
        return [node for node in self.nodes if tensor in node.inputs]

    def alias(self, source: Tensor, hint: str, shape, perm) -> str:
        """Add a Reshape node: a new view (shape, perm) of the same bytes."""
        out = self.new_tensor(hint, shape, perm)
        self.nodes.append(Node("Reshape", hint, [source.name], [out]))
        return out

    def with_order(self, tensor: Tensor, perm: tuple[int, ...], hint: str) -> Tensor:
        """Return `tensor` laid out in physical order `perm`, copying only if bytes must move."""
        perm = tuple(perm)
        if tensor.perm == perm:
            return tensor
        logical = tensor.logical_shape
        physical_shape = tuple(logical[axis] for axis in perm)
        if _same_data_order(logical, tensor.perm, perm):
            return self.tensors[self.alias(tensor, hint + "_view", physical_shape, perm)]

        inverse_in = np.argsort(tensor.perm)
        axes = tuple(int(inverse_in[axis]) for axis in perm)
        out = self.new_tensor(hint + "_transposed", physical_shape, perm)
        self.nodes.append(Node("Transpose", hint + "_transpose", [tensor.name], [out], {"perm": axes}))
        return self.tensors[out]

    def bind(self, onnx_name: str, tensor: str) -> None:
        self.env[onnx_name] = _Value(tensor)

    # -- driver ----------------------------------------------------------

    def run(self) -> Graph:
        graph = self.model.graph
        for init in graph.initializer:
            try:
                self.consts[init.name] = numpy_helper.to_array(init)
            except (KeyError, ValueError, TypeError) as error:  # unknown data_type, data not matching dims
                raise BonsaiError(f"{self.path}: initializer '{init.name}' cannot be read "
                                  f"({type(error).__name__}: {error}); re-export the model") from error
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumer_count[name] = self.consumer_count.get(name, 0) + 1
        for value in graph.value_info:
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.inferred_shapes[value.name] = tuple(d.dim_value for d in dims)

        inputs, onnx_inputs = [], []
        for value in graph.input:
            if value.name in self.consts:
                continue
            elem_type = value.type.tensor_type.elem_type
            if elem_type != onnx.TensorProto.FLOAT:
                known = elem_type in onnx.TensorProto.DataType.values()
                type_name = onnx.TensorProto.DataType.Name(elem_type) if known else f"number {elem_type}"
                raise BonsaiError(f"{self.path}: input '{value.name}' has type {type_name}; only float32 inputs are supported")
            shape = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
            # Only a tensor with channels and spatial axes (rank 3 or 4) has a channels-last order.
            spatial = len(shape) >= 3 and self.feeds_spatial_op(value.name)
            perm = _channels_last(len(shape)) if spatial else ()
            physical = tuple(shape[axis] for axis in perm) if perm else shape
            tensor = self.new_tensor(value.name, physical, perm)
            self.bind(value.name, tensor)
            inputs.append(tensor)
            onnx_inputs.append(value.name)

        for node in graph.node:
            self.import_node(node)

        outputs, onnx_outputs = [], []
        for value in graph.output:
            if value.name in self.dead:
                continue
            if value.name not in self.env:
                producer = next((node for node in graph.node if value.name in node.output), None)
                if value.name in self.consts or producer is None:
                    self.problems.append(("Output", value.name, "graph output is a constant; nothing to compute"))
                else:
                    # Mask, Indices and other secondary outputs are not computed.
                    self.problems.append((producer.op_type, producer.name or producer.output[0],
                                          f"output '{value.name}' is not supported; only the first output is computed"))
                continue
            outputs.append(self.env[value.name].tensor)
            onnx_outputs.append(value.name)
        if self.problems:
            raise UnsupportedModelError(str(self.path), self.problems)

        return Graph(self.graph_name, self.tensors, self.nodes, inputs, outputs,
                     source=str(self.path), onnx_inputs=onnx_inputs, onnx_outputs=onnx_outputs)

    def feeds_spatial_op(self, name: str) -> bool:
        spatial = ("Conv", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization")
        if any(name in node.input and node.op_type in spatial for node in self.model.graph.node):
            return True
        # Quantizers between an input and its Conv pass the values through unchanged.
        return any(node.input[:1] == [name] and node.op_type in QUANTIZER_OPS and self.feeds_spatial_op(node.output[0])
                   for node in self.model.graph.node)

    def import_node(self, node: onnx.NodeProto) -> None:
        live_inputs = [name for name in node.input if name]
        quantization_node = self.formats.handles(node)
        if node.domain not in ("", "ai.onnx") and not quantization_node:
            self.problem(node, f"operator domain '{node.domain}' is not supported")
            self.dead.update(node.output)
            return
        if any(name in self.dead for name in live_inputs):
            # An input comes from a node already reported. An unsupported op type and
            # the checks that read no input tensor still run, so one error lists them all.
            if not quantization_node and not self.has_handler(node.op_type):
                self.problem(node, "op not supported")
            elif not quantization_node:
                try:
                    self.check_attributes(node)
                except _Skip:
                    pass
            self.dead.update(node.output)
            return
        try:
            if quantization_node:
                self.formats.import_node(node)
                return
            if node.op_type == "Constant" or (live_inputs and all(n in self.consts for n in live_inputs)):
                self.fold_constant(node)
                return
            if node.op_type == "Shape":
                self.fold_shape(node)
                return
            if not self.has_handler(node.op_type):
                raise self.problem(node, "op not supported")
            self.check_attributes(node)
            handler = self.op_lut if node.op_type in LUT_OPS else getattr(self, f"op_{node.op_type}")
            handler(node)
        except _Skip:
            self.dead.update(node.output)

    def has_handler(self, op_type: str) -> bool:
        return op_type in LUT_OPS or op_type in ("Constant", "Shape") or hasattr(self, f"op_{op_type}")

    def check_attributes(self, node: onnx.NodeProto) -> None:
        """Reject unsupported settings that a node's attributes, constant inputs and output uses reveal.

        These checks read no input tensor, so they also run on nodes behind an
        already rejected node.
        """
        attrs = self.attrs(node)
        op = node.op_type
        if op == "Gemm" and attrs.get("transA", 0):
            raise self.problem(node, "transA=1 is not supported")
        if op == "Conv" and int(attrs.get("group", 1)) < 1:
            raise self.problem(node, f"group={int(attrs['group'])}; it must be a positive number")
        if op in ("AveragePool", "MaxPool"):
            if any(d != 1 for d in attrs.get("dilations", [])):
                raise self.problem(node, "dilated pooling is not supported")
            if attrs.get("storage_order", 0):
                raise self.problem(node, "storage_order=1 is not supported")
            if len(node.output) > 1 and node.output[1] and self.consumer_count.get(node.output[1], 0):
                raise self.problem(node, "the Indices output is not supported")
        if op == "Dropout":
            if len(node.output) > 1 and node.output[1] and self.consumer_count.get(node.output[1], 0):
                raise self.problem(node, "the Dropout mask output is used; only inference-mode Dropout is supported")
            training_mode = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if training_mode is not None and np.asarray(training_mode).size and np.asarray(training_mode).reshape(-1)[0]:
                raise self.problem(node, "training_mode is true; only inference-mode Dropout is supported")

    def fold_constant(self, node: onnx.NodeProto) -> None:
        from onnx.reference import ReferenceEvaluator

        feeds = {name: self.consts[name] for name in node.input if name}
        value_infos = [helper.make_empty_tensor_value_info(name) for name in feeds]
        outputs = [helper.make_empty_tensor_value_info(name) for name in node.output]
        model = helper.make_model(
            helper.make_graph([node], "fold", value_infos, outputs),
            opset_imports=[helper.make_opsetid("", self.opset)],
        )
        try:
            results = ReferenceEvaluator(model).run(None, feeds)
        except Exception as error:  # the reference evaluator raises many types
            raise self.problem(node, f"constant folding failed: {error}") from error
        for name, result in zip(node.output, results):
            self.consts[name] = np.asarray(result)

    def fold_shape(self, node: onnx.NodeProto) -> None:
        tensor = self.value(node)
        shape = np.array(tensor.logical_shape, dtype=np.int64)
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), None)
        self.consts[node.output[0]] = shape[start:end]

    # -- op handlers -----------------------------------------------------

    def attrs(self, node: onnx.NodeProto) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def op_Identity(self, node):
        self.bind(node.output[0], self.value(node).name)

    def op_Dropout(self, node):
        # This rejects a computed training_mode. check_attributes has already
        # rejected a used mask and a constant true training_mode.
        self.optional_const(node, 2)
        self.bind(node.output[0], self.value(node).name)

    def spatial_geometry(self, node, x: Tensor, kernel, attrs, what: str) -> dict:
        """Compute padding and output size of a Conv or pool on a channels-last input."""
        rank = len(x.shape)
        if rank not in (3, 4):
            raise self.problem(node, f"{what} needs a 3-D or 4-D input, got shape {list(x.logical_shape)}")
        logical = x.logical_shape
        if logical[0] != 1:
            raise self.problem(node, f"batch size {logical[0]}; the generated C runs one sample per call, export with batch 1")
        spatial = list(logical[2:])
        kernel = list(kernel)
        strides = list(attrs.get("strides", [1] * len(kernel)))
        dilations = list(attrs.get("dilations", [1] * len(kernel)))
        pads = list(attrs.get("pads", [0] * (2 * len(kernel))))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        ceil_mode = int(attrs.get("ceil_mode", 0))
        if len(kernel) != len(spatial):
            raise self.problem(node, f"kernel rank {len(kernel)} does not match input shape {list(logical)}")

        dims = len(kernel)
        begins, ends, outs = [], [], []
        for axis in range(dims):
            extent = (kernel[axis] - 1) * dilations[axis] + 1
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = -(-spatial[axis] // strides[axis])
                total = max(0, (out - 1) * strides[axis] + extent - spatial[axis])
                small, large = total // 2, total - total // 2
                begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            elif auto_pad == "VALID":
                begin, end = 0, 0
            elif auto_pad == "NOTSET":
                begin, end = pads[axis], pads[axis + dims]
            else:
                raise self.problem(node, f"auto_pad '{auto_pad}' is not a valid value")
            span = spatial[axis] + begin + end - extent
            if span < 0:
                raise self.problem(node, f"kernel {kernel} is larger than the padded input {list(logical)}")
            out = (-(-span // strides[axis]) if ceil_mode else span // strides[axis]) + 1
            if ceil_mode and (out - 1) * strides[axis] >= spatial[axis] + begin:
                out -= 1
            begins.append(begin)
            ends.append(end)
            outs.append(out)

        if dims == 1:
            kernel, strides, dilations = [1] + kernel, [1] + strides, [1] + dilations
            begins, ends, outs, spatial = [0] + begins, [0] + ends, [1] + outs, [1] + spatial
        return {
            "in_h": spatial[0], "in_w": spatial[1], "in_channels": logical[1],
            "out_h": outs[0], "out_w": outs[1],
            "kernel": (kernel[0], kernel[1]), "strides": (strides[0], strides[1]),
            "dilations": (dilations[0], dilations[1]),
            "pads": (begins[0], begins[1], ends[0], ends[1]), "rank": rank,
        }

    def op_Conv(self, node):
        attrs = self.attrs(node)
        weights = self.const(node, 1, "weight tensor W").astype(np.float64)
        bias = self.optional_const(node, 2)
        x = self.value(node)
        if weights.ndim not in (3, 4):
            raise self.problem(node, f"only 1-D and 2-D convolutions are supported, W has shape {list(weights.shape)}")
        if weights.ndim != len(x.shape):
            raise self.problem(node, f"W rank {weights.ndim} does not match input rank {len(x.shape)}")
        group = int(attrs.get("group", 1))
        kernel = attrs.get("kernel_shape", list(weights.shape[2:]))
        if list(kernel) != list(weights.shape[2:]):
            raise self.problem(node, f"kernel_shape {list(kernel)} does not match W of shape {list(weights.shape)}")
        geometry = self.spatial_geometry(node, x, kernel, attrs, "Conv")
        out_channels = weights.shape[0]
        if geometry["in_channels"] % group or out_channels % group:
            raise self.problem(node, f"group={group} does not divide {geometry['in_channels']} input and {out_channels} output channels")
        if weights.shape[1] * group != geometry["in_channels"]:
            raise self.problem(node, f"W shape {list(weights.shape)} does not match {geometry['in_channels']} input channels with group={group}")

        x = self.with_order(x, _channels_last(len(x.shape)), node.name or "conv_input")
        if weights.ndim == 3:
            weights = weights[:, :, None, :]
        weights = np.ascontiguousarray(weights.transpose(0, 2, 3, 1))
        bias = np.zeros(out_channels) if bias is None else bias.astype(np.float64).reshape(-1)
        if bias.shape != (out_channels,):
            raise self.problem(node, f"bias B has {bias.size} values for {out_channels} output channels")

        if geometry["rank"] == 4:
            shape = (1, geometry["out_h"], geometry["out_w"], out_channels)
        else:
            shape = (1, geometry["out_w"], out_channels)
        out = self.new_tensor(node.output[0], shape, _channels_last(len(shape)))
        geometry.update(group=group, out_channels=out_channels, activation=None)
        self.nodes.append(Node("Conv", node.name or node.output[0], [x.name], [out], geometry, weights, bias))
        self.bind(node.output[0], out)

    def dense(self, node, x: Tensor, weights: np.ndarray, bias: np.ndarray) -> None:
        logical = x.logical_shape
        if len(logical) < 1 or logical[-1] != weights.shape[1]:
            raise self.problem(node, f"input shape {list(logical)} does not match weight shape {list(weights.shape)}")
        x = self.with_order(x, tuple(range(len(logical))), node.name or "dense_input")
        shape = tuple(logical[:-1]) + (weights.shape[0],)
        out = self.new_tensor(node.output[0], shape)
        attrs = {"rows": int(np.prod(logical[:-1], dtype=np.int64)), "activation": None}
        self.nodes.append(Node("Dense", node.name or node.output[0], [x.name], [out], attrs, weights, bias))
        self.bind(node.output[0], out)

    def op_Gemm(self, node):
        attrs = self.attrs(node)
        b = self.const(node, 1, "B").astype(np.float64)
        x = self.value(node)
        if b.ndim != 2 or len(x.shape) != 2:
            raise self.problem(node, "Gemm needs a 2-D input and a 2-D constant B")
        weights = b if attrs.get("transB", 0) else b.T
        weights = weights * attrs.get("alpha", 1.0)
        c = self.optional_const(node, 2)
        bias = np.zeros(weights.shape[0])
        if c is not None:
            c = np.asarray(c, dtype=np.float64) * attrs.get("beta", 1.0)
            if c.size not in (1, weights.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                raise self.problem(node, f"bias C of shape {list(c.shape)} is not a per-output vector")
            bias = np.broadcast_to(c.reshape(-1), (weights.shape[0],)).copy()
        self.dense(node, x, np.ascontiguousarray(weights), bias)

    def op_MatMul(self, node):
        if node.input[1] not in self.consts:
            raise self.problem(node, "the right operand must be a constant weight matrix")
        b = self.consts[node.input[1]].astype(np.float64)
        if b.ndim != 2:
            raise self.problem(node, f"constant operand of shape {list(b.shape)}; only 2-D weights are supported")
        x = self.value(node)
        self.dense(node, x, np.ascontiguousarray(b.T), np.zeros(b.shape[1]))

    def op_BatchNormalization(self, node):
        attrs = self.attrs(node)
        gamma, beta, mean, var = (self.const(node, i, what).astype(np.float64)
                                  for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
        if len(node.output) > 1 and any(self.consumer_count.get(o, 0) for o in node.output[1:] if o):
            raise self.problem(node, "training-mode outputs are used")
        producer = self.fusable_producer(node.input[0], ("Conv", "Dense"))
        if producer is None or producer.attrs.get("activation"):
            raise self.problem(node, "BatchNormalization must follow a Conv or Gemm whose output has no other consumer, so it can be folded")
        channels = producer.weights.shape[0]
        for values, what in ((gamma, "scale"), (beta, "B"), (mean, "mean"), (var, "var")):
            if values.size != channels:
                raise self.problem(node, f"{what} has shape {list(values.shape)}; expected {channels} values, "
                                         "one per channel")
        gamma, beta, mean, var = (values.reshape(-1) for values in (gamma, beta, mean, var))
        factor = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        producer.weights = producer.weights * factor.reshape((-1,) + (1,) * (producer.weights.ndim - 1))
        producer.bias = (producer.bias - mean) * factor + beta
        self.bind(node.output[0], producer.outputs[0])

    def op_Add(self, node):
        a_const, b_const = (name in self.consts for name in node.input[:2])
        if a_const or b_const:
            self.fold_bias(node, node.input[1] if b_const else node.input[0], node.input[0] if b_const else node.input[1])
            return
        a, b = self.value(node, 0), self.value(node, 1)
        self.binary_add(node, a, b)

    def fold_bias(self, node, const_name: str, dynamic_name: str) -> None:
        constant = np.asarray(self.consts[const_name], dtype=np.float64)
        producer = self.fusable_producer(dynamic_name, ("Conv", "Dense"))
        if producer is None or producer.attrs.get("activation"):
            raise self.problem(node, "adding a constant is supported only as the bias of the preceding Conv, Gemm or MatMul")
        out = self.tensors[producer.outputs[0]]
        logical = out.logical_shape
        channel_axis = 1 if producer.op == "Conv" else len(logical) - 1
        expected = [1] * len(logical)
        expected[channel_axis] = logical[channel_axis]
        padded = (1,) * (len(logical) - constant.ndim) + constant.shape
        if constant.ndim > len(logical) or any(d not in (1, e) for d, e in zip(padded, expected)):
            raise self.problem(node, f"constant of shape {list(constant.shape)} is not a per-channel bias of {list(logical)}")
        producer.bias = producer.bias + np.broadcast_to(constant.reshape(padded), expected).reshape(-1)
        self.bind(node.output[0], producer.outputs[0])

    def binary_add(self, node, a: Tensor, b: Tensor) -> None:
        la, lb = a.logical_shape, b.logical_shape
        try:
            out_logical = np.broadcast_shapes(la, lb)
        except ValueError:
            raise self.problem(node, f"shapes {list(la)} and {list(lb)} do not broadcast") from None
        rank = len(out_logical)
        base = a if len(la) == rank else b
        perm = base.perm
        views = []
        for tensor in (a, b):
            if len(tensor.shape) < rank:
                tensor = self.with_order(tensor, tuple(range(len(tensor.shape))), node.name or "add_input")
                logical = (1,) * (rank - len(tensor.shape)) + tensor.logical_shape
                if not _same_data_order(logical, tuple(range(rank)), perm):
                    raise self.problem(node, "broadcasting a lower-rank input against a channels-last tensor is not supported")
                tensor = self.tensors[self.alias(tensor, (node.name or "add") + "_broadcast",
                                                 tuple(logical[axis] for axis in perm), perm)]
            else:
                tensor = self.with_order(tensor, perm, node.name or "add_input")
            views.append(tensor)
        out_shape = tuple(out_logical[axis] for axis in perm)
        out = self.new_tensor(node.output[0], out_shape, perm)
        attrs = {"a_shape": views[0].shape, "b_shape": views[1].shape, "activation": None}
        self.nodes.append(Node("Add", node.name or node.output[0], [views[0].name, views[1].name], [out], attrs))
        self.bind(node.output[0], out)

    def activation(self, node, kind: tuple) -> None:
        producer = self.fusable_producer(node.input[0], ("Conv", "Dense", "Add"))
        if producer is not None and producer.attrs.get("activation") is None:
            producer.attrs["activation"] = kind
            self.bind(node.output[0], producer.outputs[0])
            return
        x = self.value(node)
        out = self.new_tensor(node.output[0], x.shape, x.perm)
        self.nodes.append(Node("Clamp", node.name or node.output[0], [x.name], [out], {"activation": kind}))
        self.bind(node.output[0], out)

    def op_Relu(self, node):
        self.activation(node, ("clip", 0.0, float("inf")))

    def op_Clip(self, node):
        attrs = self.attrs(node)
        low, high = attrs.get("min", -float("inf")), attrs.get("max", float("inf"))
        low_const, high_const = self.optional_const(node, 1), self.optional_const(node, 2)
        for bound, what in ((low_const, "min"), (high_const, "max")):
            if bound is not None and np.asarray(bound).size != 1:
                raise self.problem(node, f"{what} has {np.asarray(bound).size} values; it must be a scalar")
        if low_const is not None:
            low = float(np.asarray(low_const).reshape(-1)[0])
        if high_const is not None:
            high = float(np.asarray(high_const).reshape(-1)[0])
        # ONNX Clip is min(max(x, min), max): with min > max every output is max.
        low = min(float(low), float(high))
        self.activation(node, ("clip", low, float(high)))

    def op_lut(self, node):
        x = self.value(node)
        attrs = {"function": node.op_type, "params": {k: float(v) for k, v in self.attrs(node).items()}}
        out = self.new_tensor(node.output[0], x.shape, x.perm)
        self.nodes.append(Node("Lut", node.name or node.output[0], [x.name], [out], attrs))
        self.bind(node.output[0], out)

    def pool(self, node, op: str, kernel, attrs) -> None:
        x = self.value(node)
        geometry = self.spatial_geometry(node, x, kernel, attrs, op)
        x = self.with_order(x, _channels_last(len(x.shape)), node.name or "pool_input")
        geometry["count_include_pad"] = int(attrs.get("count_include_pad", 0))
        channels = geometry["in_channels"]
        if geometry["rank"] == 4:
            shape = (1, geometry["out_h"], geometry["out_w"], channels)
        else:
            shape = (1, geometry["out_w"], channels)
        out = self.new_tensor(node.output[0], shape, _channels_last(len(shape)))
        self.nodes.append(Node(op, node.name or node.output[0], [x.name], [out], geometry))
        self.bind(node.output[0], out)

    def op_AveragePool(self, node):
        attrs = self.attrs(node)
        self.pool(node, "AveragePool", attrs["kernel_shape"], attrs)

    def op_MaxPool(self, node):
        attrs = self.attrs(node)
        self.pool(node, "MaxPool", attrs["kernel_shape"], attrs)

    def op_GlobalAveragePool(self, node):
        x = self.value(node)
        self.pool(node, "AveragePool", x.logical_shape[2:], {})

    def op_GlobalMaxPool(self, node):
        x = self.value(node)
        self.pool(node, "MaxPool", x.logical_shape[2:], {})

    def reshape_to(self, node, x: Tensor, shape) -> None:
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape, dtype=np.int64)) != x.size:
            raise self.problem(node, f"cannot reshape {list(x.logical_shape)} to {list(shape)}")
        x = self.with_order(x, tuple(range(len(x.shape))), node.name or "reshape_input")
        out = self.alias(x, node.output[0], shape, ())
        self.bind(node.output[0], out)

    def op_Reshape(self, node):
        x = self.value(node)
        shape_values = np.asarray(self.const(node, 1, "shape")).reshape(-1)
        if not np.issubdtype(shape_values.dtype, np.integer):
            raise self.problem(node, f"shape has type {shape_values.dtype}; it must be an int64 tensor")
        if shape_values.size and (shape_values.min() < -1 or shape_values.max() >= 2 ** 31):
            raise self.problem(node, f"shape {shape_values.tolist()} holds a dimension outside [-1, 2^31)")
        target = [int(d) for d in shape_values]
        allowzero = self.attrs(node).get("allowzero", 0)
        logical = x.logical_shape
        if not allowzero and any(d == 0 and i >= len(logical) for i, d in enumerate(target)):
            raise self.problem(node, f"shape {target} copies (0) an axis that input shape {list(logical)} lacks")
        resolved = [logical[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
        if resolved.count(-1) > 1:
            raise self.problem(node, "shape has more than one -1")
        if -1 in resolved:
            known = int(np.prod([d for d in resolved if d != -1], dtype=np.int64))
            if known == 0 or x.size % known:
                raise self.problem(node, f"cannot reshape {list(logical)} to {target}")
            resolved[resolved.index(-1)] = x.size // known
        self.reshape_to(node, x, resolved)

    def op_Flatten(self, node):
        x = self.value(node)
        logical = x.logical_shape
        axis = self.attrs(node).get("axis", 1)
        axis = axis + len(logical) if axis < 0 else axis
        outer = int(np.prod(logical[:axis], dtype=np.int64))
        self.reshape_to(node, x, (outer, x.size // max(outer, 1)))

    def axes_of(self, node) -> list[int] | None:
        axes = self.attrs(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            values = np.asarray(self.const(node, 1, "axes")).reshape(-1)
            if not np.issubdtype(values.dtype, np.integer):
                raise self.problem(node, f"axes has type {values.dtype}; it must be an int64 tensor")
            axes = [int(a) for a in values]
        return None if axes is None else list(axes)

    def op_Squeeze(self, node):
        x = self.value(node)
        logical = x.logical_shape
        axes = self.axes_of(node)
        if axes is None:
            axes = [i for i, d in enumerate(logical) if d == 1]
        axes = [a + len(logical) if a < 0 else a for a in axes]
        if any(a < 0 or a >= len(logical) for a in axes) or any(logical[a] != 1 for a in axes):
            raise self.problem(node, f"cannot squeeze axes {axes} of shape {list(logical)}")
        self.reshape_to(node, x, [d for i, d in enumerate(logical) if i not in axes])

    def op_Unsqueeze(self, node):
        x = self.value(node)
        shape = list(x.logical_shape)
        axes = self.axes_of(node) or []
        rank = len(shape) + len(axes)
        for axis in sorted(a + rank if a < 0 else a for a in axes):
            shape.insert(axis, 1)
        self.reshape_to(node, x, shape)

    def op_Transpose(self, node):
        x = self.value(node)
        rank = len(x.shape)
        order = self.attrs(node).get("perm", list(range(rank))[::-1])
        if sorted(order) != list(range(rank)):
            raise self.problem(node, f"perm {list(order)} is not a permutation of the {rank} input axes")
        inverse = np.argsort(order)
        perm = tuple(int(inverse[axis]) for axis in x.perm)
        out = self.alias(x, node.output[0], x.shape, perm)
        self.bind(node.output[0], out)

    def op_Softmax(self, node):
        x = self.value(node)
        logical = x.logical_shape
        rank = len(logical)
        axis = self.attrs(node).get("axis", 1 if self.opset < 13 else -1)
        axis = axis + rank if axis < 0 else axis
        axes = list(range(axis, rank)) if self.opset < 13 else [axis]
        trailing = [a for a in x.perm if logical[a] != 1][-len([a for a in axes if logical[a] != 1]) or len(x.perm):]
        inner = [a for a in axes if logical[a] != 1]
        if inner and trailing != inner:
            x = self.with_order(x, tuple(a for a in range(rank) if a not in axes) + tuple(axes), node.name or "softmax_input")
        row = int(np.prod([logical[a] for a in axes], dtype=np.int64))
        if row > SOFTMAX_MAX_ROW:
            raise self.problem(node, f"softmax over {row} values; the int8 kernel supports at most {SOFTMAX_MAX_ROW}")
        out = self.new_tensor(node.output[0], x.shape, x.perm)
        self.nodes.append(Node("Softmax", node.name or node.output[0], [x.name], [out], {"row": row}))
        self.bind(node.output[0], out)


def import_onnx(path: str | Path, name: str | None = None) -> Graph:
    """Read an ONNX file into an IR graph, or raise BonsaiError naming what is wrong."""
    path = Path(path)
    model = _load(path)
    _fix_input_shapes(model, path)
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as error:  # onnx raises InferenceError and plain RuntimeErrors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BonsaiError(f"{path}: shape inference failed: {first_line}") from error

    graph_name = name or _sanitize(path.stem).lower()
    graph = _Importer(model, path, graph_name).run()
    log.info("imported %s: %d nodes", path, len(graph.nodes))
    return graph
