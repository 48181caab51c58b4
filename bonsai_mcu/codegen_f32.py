"""Codegen for float32 models (--weights float32): float kernels and a float arena.

The plan stage sizes tensors in elements; in a float model every element is
a 4-byte float, so each planned offset and the arena size are multiplied by
FLOAT_BYTES. The kernels are templates/kernels/*_f32.c.j2; their semantics
are reference.run_float, compared with a tolerance instead of bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from . import BonsaiError
from .codegen import _Array, _Emitter, broadcast_fields, comment_text, element_strides, padded6, shape_text
from .ir import Node

FLOAT_BYTES = 4

KERNEL_OF_OP_F32 = {
    "Conv": "conv2d_f32", "Dense": "dense_f32", "Add": "add_f32", "AveragePool": "pool_f32",
    "MaxPool": "pool_f32", "Softmax": "softmax_f32", "Clamp": "elementwise_f32", "Lut": "elementwise_f32",
    "Transpose": "transpose_f32",
}

# ONNX unary ops of the Lut IR node and their {GUARD}_UNARY_* code in kernels_f32.h.j2.
UNARY_FUNCTIONS = {
    "Sigmoid": "SIGMOID", "Tanh": "TANH", "LeakyRelu": "LEAKY_RELU", "HardSigmoid": "HARD_SIGMOID",
    "HardSwish": "HARD_SWISH", "Elu": "ELU", "Softplus": "SOFTPLUS",
}

# ONNX defaults of alpha and beta for each unary op (HardSwish is HardSigmoid's
# formula with alpha = 1/6, beta = 1/2).
UNARY_DEFAULTS = {
    "LeakyRelu": (0.01, 0.0), "HardSigmoid": (0.2, 0.5), "HardSwish": (1.0 / 6.0, 0.5), "Elu": (1.0, 0.0),
}


def float_literal(value: float, where: str) -> str:
    """Return a C float literal that reads back as the same float32."""
    single = np.float32(value)
    if not np.isfinite(single):
        raise BonsaiError(f"{where}: value {float(value)!r} is not finite in float32; "
                          "the float32 C cannot store it in a constant")
    text = str(single)
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"


def float_array_body(values, where: str, per_line: int = 8) -> str:
    items = [float_literal(v, where) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return ",\n".join("    " + line for line in lines)


def bounds_init(node: Node) -> str:
    """Return the initializer of a {prefix}_bounds_f32 for the node's fused activation."""
    activation = node.attrs.get("activation")
    low, high = (-math.inf, math.inf) if activation is None else (activation[1], activation[2])
    has_low, has_high = not math.isinf(low), not math.isinf(high)
    where = f"node '{node.name}' activation bounds"
    low_text = float_literal(low, where) if has_low else "0.0f"
    high_text = float_literal(high, where) if has_high else "0.0f"
    return f"{{ {low_text}, {high_text}, {int(has_low)}, {int(has_high)} }}"


class FloatEmitter(_Emitter):
    """Collects the float32 C data blocks and calls of one graph."""

    def pointer(self, tensor: str, const: bool) -> str:
        qualifier = "const float *" if const else "float *"
        return f"({qualifier})(void *)(arena + {self.plan.offsets[tensor] * FLOAT_BYTES})"

    def describe(self, index: int, node: Node) -> str:
        ins = ", ".join(shape_text(self.graph.tensors[t].shape) for t in node.inputs)
        out = shape_text(self.graph.tensors[node.outputs[0]].shape)
        text = f"{index}: {node.op} \"{node.name}\", {ins} -> {out}"
        if node.weights is not None:
            text += ", float32 weights"
        activation = node.attrs.get("activation")
        if activation is not None:
            text += f", clamp [{activation[1]:g}, {activation[2]:g}]"
        return comment_text(text)

    def weight_arrays(self, node: Node, symbol: str) -> list[_Array]:
        where = f"node '{node.name}' weights"
        return [
            _Array("float", f"{symbol}_weights", node.weights.size, float_array_body(node.weights, where)),
            _Array("float", f"{symbol}_bias", node.bias.size, float_array_body(node.bias, f"node '{node.name}' bias")),
        ]

    def emit(self, index: int, node: Node) -> None:
        symbol = f"{self.prefix}_layer{index}"
        comment = self.describe(index, node)
        out = node.outputs[0]
        kernel = KERNEL_OF_OP_F32.get(node.op)
        if kernel:
            self.kernels.add(kernel)
        block = {"comment": comment, "arrays": [], "params_type": "", "symbol": symbol, "init": ""}
        params_type = ""
        source = self.pointer(node.inputs[0], True)
        target = self.pointer(out, False)
        a = node.attrs

        if node.op == "Conv":
            kernel_h, kernel_w = a["kernel"]
            stride_h, stride_w = a["strides"]
            dilation_h, dilation_w = a["dilations"]
            pad_top, pad_left, _, _ = a["pads"]
            geometry = [a["in_h"], a["in_w"], a["in_channels"], a["out_h"], a["out_w"], a["out_channels"],
                        kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, a["group"]]
            params_type = f"{self.prefix}_conv2d_f32_params"
            block.update(arrays=self.weight_arrays(node, symbol),
                         init=f"{{ {symbol}_weights, {symbol}_bias, {', '.join(map(str, geometry))}, "
                              f"{bounds_init(node)} }}")
            call = f"{self.prefix}_conv2d_f32(&{symbol}, {source}, {target});"
        elif node.op == "Dense":
            params_type = f"{self.prefix}_dense_f32_params"
            out_features, depth = node.weights.shape
            block.update(arrays=self.weight_arrays(node, symbol),
                         init=f"{{ {symbol}_weights, {symbol}_bias, {a['rows']}, {depth}, {out_features}, "
                              f"{bounds_init(node)} }}")
            call = f"{self.prefix}_dense_f32(&{symbol}, {source}, {target});"
        elif node.op == "Add":
            arrays_text = broadcast_fields(self.graph.tensors[out].shape, a["a_shape"], a["b_shape"])
            params_type = f"{self.prefix}_add_f32_params"
            block.update(init=f"{{ {arrays_text}, {bounds_init(node)} }}")
            call = f"{self.prefix}_add_f32(&{symbol}, {source}, {self.pointer(node.inputs[1], True)}, {target});"
        elif node.op in ("AveragePool", "MaxPool"):
            kernel_h, kernel_w = a["kernel"]
            stride_h, stride_w = a["strides"]
            fields = [a["in_h"], a["in_w"], a["in_channels"], a["out_h"], a["out_w"], kernel_h, kernel_w,
                      stride_h, stride_w, *a["pads"], a.get("count_include_pad", 0)]
            params_type = f"{self.prefix}_pool_f32_params"
            block.update(init="{ " + ", ".join(map(str, fields)) + " }")
            function = "average_pool_f32" if node.op == "AveragePool" else "max_pool_f32"
            call = f"{self.prefix}_{function}(&{symbol}, {source}, {target});"
        elif node.op == "Softmax":
            size = self.graph.tensors[out].size
            call = f"{self.prefix}_softmax_f32({source}, {target}, {size // a['row']}, {a['row']});"
        elif node.op == "Clamp":
            params_type = f"{self.prefix}_bounds_f32"
            block.update(init=bounds_init(node))
            call = f"{self.prefix}_clamp_tensor_f32(&{symbol}, {source}, {target}, {self.graph.tensors[out].size});"
        elif node.op == "Lut":
            function = a["function"]
            if function not in UNARY_FUNCTIONS:
                raise BonsaiError(f"node '{node.name}': {function} has no float32 kernel; "
                                  "generate without --weights float32")
            alpha, beta = UNARY_DEFAULTS.get(function, (0.0, 0.0))
            alpha = a["params"].get("alpha", alpha)
            beta = a["params"].get("beta", beta)
            where = f"node '{node.name}' attributes"
            call = (f"{self.prefix}_unary_f32({self.guard}_UNARY_{UNARY_FUNCTIONS[function]}, "
                    f"{float_literal(alpha, where)}, {float_literal(beta, where)}, {source}, {target}, "
                    f"{self.graph.tensors[out].size});")
        elif node.op == "Transpose":
            strides = element_strides(self.graph.tensors[node.inputs[0]].shape)
            fields = [padded6(self.graph.tensors[out].shape, 1), padded6([strides[axis] for axis in a["perm"]], 0)]
            params_type = f"{self.prefix}_transpose_f32_params"
            block.update(init="{ " + ", ".join("{ " + ", ".join(map(str, f)) + " }" for f in fields) + " }")
            call = f"{self.prefix}_transpose_f32(&{symbol}, {source}, {target});"
        elif node.op == "Reshape":
            if self.plan.offsets[node.inputs[0]] != self.plan.offsets[out]:
                raise AssertionError(f"Reshape '{node.name}' view does not share its input's bytes")
            call = "/* a view of the same bytes: nothing to do */"
        else:
            raise BonsaiError(f"node '{node.name}': IR op {node.op} has no float32 kernel; "
                              "generate without --weights float32")

        block["params_type"] = params_type
        if block["arrays"] or params_type:
            self.blocks.append(block)
        self.layers.append({"comment": comment, "call": call, "params_type": params_type, "symbol": symbol})
