"""Reference stage: numpy interpreters of the IR graph.

`run_quantized` is the specification of the generated C: every integer step
below (accumulation, requantization, rounding, saturation, tables) is the one
the C kernels perform, so their int8 outputs agree bit for bit.
`run_float` evaluates the same graph in float64; the quantize stage uses it
to calibrate activation ranges.

Tensors are physical arrays (channels-last for spatial tensors).
"""

from __future__ import annotations

import math

import numpy as np

from .ir import Graph, Node

# -- rounding rules, written once ------------------------------------------


def round_half_away(values: np.ndarray) -> np.ndarray:
    """Round float values to the nearest integer, ties away from zero."""
    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def rounding_shift(values: np.ndarray, shift: int) -> np.ndarray:
    """Divide int64 values by 2**shift, rounding half away from zero (shift >= 1)."""
    values = np.asarray(values, dtype=np.int64)
    half = np.int64(1) << np.int64(shift - 1)
    magnitude = (np.abs(values) + half) >> np.int64(shift)
    return np.where(values < 0, -magnitude, magnitude)


def rounding_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Divide integers, rounding half away from zero (denominator > 0)."""
    numerator = np.asarray(numerator, dtype=np.int64)
    denominator = np.asarray(denominator, dtype=np.int64)
    magnitude = (2 * np.abs(numerator) + denominator) // (2 * denominator)
    return np.where(numerator < 0, -magnitude, magnitude)


def saturate(values: np.ndarray, low: int = -128, high: int = 127) -> np.ndarray:
    return np.clip(values, low, high).astype(np.int8)


# -- shared geometry ---------------------------------------------------------


def spatial_windows(x: np.ndarray, attrs: dict, pad_value) -> tuple[np.ndarray, np.ndarray]:
    """Gather the kernel windows of a channels-last input.

    Returns windows [OH, OW, KH, KW, C] and a mask [OH, OW, KH, KW] that is
    1 where a window element lies inside the input, 2 inside the declared
    padding and 0 beyond it (ceil_mode windows that overhang the padding).
    """
    in_h, in_w = attrs["in_h"], attrs["in_w"]
    channels = x.size // (in_h * in_w)
    image = x.reshape(in_h, in_w, channels)
    kernel_h, kernel_w = attrs["kernel"]
    stride_h, stride_w = attrs["strides"]
    dilation_h, dilation_w = attrs["dilations"]
    pad_top, pad_left, pad_bottom, pad_right = attrs["pads"]
    out_h, out_w = attrs["out_h"], attrs["out_w"]

    rows = np.arange(out_h)[:, None] * stride_h + np.arange(kernel_h)[None, :] * dilation_h - pad_top
    cols = np.arange(out_w)[:, None] * stride_w + np.arange(kernel_w)[None, :] * dilation_w - pad_left
    row_inside = (rows >= 0) & (rows < in_h)
    col_inside = (cols >= 0) & (cols < in_w)
    row_declared = (rows >= -pad_top) & (rows < in_h + pad_bottom)
    col_declared = (cols >= -pad_left) & (cols < in_w + pad_right)

    safe_rows = np.clip(rows, 0, in_h - 1)
    safe_cols = np.clip(cols, 0, in_w - 1)
    windows = image[safe_rows[:, None, :, None], safe_cols[None, :, None, :]]
    inside = row_inside[:, None, :, None] & col_inside[None, :, None, :]
    declared = row_declared[:, None, :, None] & col_declared[None, :, None, :]
    windows = np.where(inside[..., None], windows, pad_value)
    mask = np.where(inside, 1, np.where(declared, 2, 0))
    return windows, mask


def _activation_bounds(attrs: dict) -> tuple[float, float]:
    activation = attrs.get("activation")
    if activation is None:
        return -math.inf, math.inf
    return activation[1], activation[2]


def lut_function(name: str, params: dict):
    """Return the float function of a unary op that int8 evaluates through a table."""
    if name == "Sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    if name == "Tanh":
        return np.tanh
    if name == "LeakyRelu":
        alpha = params.get("alpha", 0.01)
        return lambda x: np.where(x >= 0, x, alpha * x)
    if name == "HardSigmoid":
        alpha, beta = params.get("alpha", 0.2), params.get("beta", 0.5)
        return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)
    if name == "HardSwish":
        return lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if name == "Elu":
        alpha = params.get("alpha", 1.0)
        # expm1 keeps the relative precision of exp(x) - 1 for tiny negative x.
        return lambda x: np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if name == "Softplus":
        return lambda x: np.logaddexp(0.0, x)
    raise ValueError(f"no float function for {name}")


# -- float interpreter ---------------------------------------------------------


def _float_weights(node: Node) -> np.ndarray:
    """Return the weights the float run uses: dequantized once quantized."""
    return node.quant.get("dequantized", node.weights)


def float_conv(node: Node, x: np.ndarray) -> np.ndarray:
    attrs = node.attrs
    windows, _ = spatial_windows(x, attrs, 0.0)
    group = attrs["group"]
    out_h, out_w, kernel_h, kernel_w, channels = windows.shape
    weights = _float_weights(node)
    out_channels = weights.shape[0]
    patches = windows.reshape(out_h * out_w, kernel_h, kernel_w, group, channels // group)
    weights = weights.reshape(group, out_channels // group, kernel_h, kernel_w, channels // group)
    out = np.einsum("phwgc,gohwc->pgo", patches, weights).reshape(out_h * out_w, out_channels)
    low, high = _activation_bounds(attrs)
    return np.clip(out + node.bias, low, high)


def float_dense(node: Node, x: np.ndarray) -> np.ndarray:
    weights = _float_weights(node)
    out = x.reshape(node.attrs["rows"], weights.shape[1]) @ weights.T + node.bias
    low, high = _activation_bounds(node.attrs)
    return np.clip(out, low, high)


def float_add(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = a.reshape(node.attrs["a_shape"]) + b.reshape(node.attrs["b_shape"])
    low, high = _activation_bounds(node.attrs)
    return np.clip(out, low, high)


def float_pool(node: Node, x: np.ndarray) -> np.ndarray:
    attrs = node.attrs
    if node.op == "MaxPool":
        windows, mask = spatial_windows(x, attrs, -np.inf)
        return windows.max(axis=(2, 3))
    windows, mask = spatial_windows(x, attrs, 0.0)
    counted = mask == 1 if not attrs["count_include_pad"] else mask > 0
    return windows.sum(axis=(2, 3)) / counted.sum(axis=(2, 3))[..., None]


def float_softmax(node: Node, x: np.ndarray) -> np.ndarray:
    rows = x.reshape(-1, node.attrs["row"])
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run_float(graph: Graph, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate the graph in float64 on physical inputs; return every tensor by name."""
    values = {name: np.asarray(array, dtype=np.float64).reshape(-1)
              for name, array in zip(graph.inputs, inputs)}
    for node in graph.nodes:
        args = [values[name] for name in node.inputs]
        if node.op == "Conv":
            out = float_conv(node, args[0])
        elif node.op == "Dense":
            out = float_dense(node, args[0])
        elif node.op == "Add":
            out = float_add(node, *args)
        elif node.op in ("AveragePool", "MaxPool"):
            out = float_pool(node, args[0])
        elif node.op == "Softmax":
            out = float_softmax(node, args[0])
        elif node.op == "Clamp":
            low, high = _activation_bounds(node.attrs)
            out = np.clip(args[0], low, high)
        elif node.op == "Lut":
            out = lut_function(node.attrs["function"], node.attrs["params"])(args[0])
        elif node.op == "Transpose":
            source = graph.tensors[node.inputs[0]]
            out = np.transpose(args[0].reshape(source.shape), node.attrs["perm"])
        elif node.op == "Reshape":
            out = args[0]
        else:
            raise ValueError(f"run_float: no implementation of IR op {node.op}")
        values[node.outputs[0]] = np.ascontiguousarray(out).reshape(-1)
    return values


# -- int8 interpreter ----------------------------------------------------------


def requantize(accumulators: np.ndarray, quant: dict) -> np.ndarray:
    """Apply the weighted-op requantization: bias, multipliers, one rounding shift.

    accumulators: int64 [P, O, G], one int32 partial sum per scale group.
    v = bias[o] + sum_g acc[p, o, g] * multiplier[o, g]
    out = clamp(rounding_shift(v, shift) + zero_point, act_min, act_max)
    """
    multipliers = quant["multiplier_matrix"]
    total = quant["bias_fixed"][None, :] + (accumulators * multipliers[None, :, :]).sum(axis=2)
    out = rounding_shift(total, quant["shift"]) + quant["output_zero_point"]
    return saturate(out, quant["act_min"], quant["act_max"])


def _grouped_accumulate(x_centered: np.ndarray, weights: np.ndarray, group_size: int) -> np.ndarray:
    """Sum x * w per scale group: x [P, K], weights [O, K] -> int64 [P, O, G]."""
    positions, depth = x_centered.shape
    groups = -(-depth // group_size)
    padded = groups * group_size
    x = np.zeros((positions, padded), dtype=np.int64)
    x[:, :depth] = x_centered
    w = np.zeros((weights.shape[0], padded), dtype=np.int64)
    w[:, :depth] = weights
    return np.einsum("pgk,ogk->pog", x.reshape(positions, groups, group_size),
                     w.reshape(-1, groups, group_size))


def int8_conv(node: Node, x: np.ndarray) -> np.ndarray:
    attrs, quant = node.attrs, node.quant
    windows, _ = spatial_windows(x, attrs, quant["input_zero_point"])
    out_h, out_w, kernel_h, kernel_w, channels = windows.shape
    group = attrs["group"]
    out_channels = attrs["out_channels"]
    per_group_in = channels // group
    per_group_out = out_channels // group
    centered = windows.astype(np.int64) - quant["input_zero_point"]
    patches = centered.reshape(out_h * out_w, kernel_h, kernel_w, group, per_group_in)
    weights = quant["values"].reshape(out_channels, kernel_h * kernel_w * per_group_in)
    parts = []
    for g in range(group):
        x_g = patches[:, :, :, g, :].reshape(out_h * out_w, -1)
        w_g = weights[g * per_group_out:(g + 1) * per_group_out]
        parts.append(_grouped_accumulate(x_g, w_g, quant["group_size"]))
    accumulators = np.concatenate(parts, axis=1)
    return requantize(accumulators, quant)


def int8_dense(node: Node, x: np.ndarray) -> np.ndarray:
    quant = node.quant
    weights = quant["values"]
    rows = x.reshape(node.attrs["rows"], weights.shape[1]).astype(np.int64) - quant["input_zero_point"]
    return requantize(_grouped_accumulate(rows, weights, quant["group_size"]), quant)


def int8_add(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    quant = node.quant
    a = a.reshape(node.attrs["a_shape"]).astype(np.int64) - quant["a_zero_point"]
    b = b.reshape(node.attrs["b_shape"]).astype(np.int64) - quant["b_zero_point"]
    total = a * quant["a_multiplier"] + b * quant["b_multiplier"]
    out = rounding_shift(total, quant["shift"]) + quant["output_zero_point"]
    return saturate(out, quant["act_min"], quant["act_max"])


def int8_pool(node: Node, x: np.ndarray) -> np.ndarray:
    attrs = node.attrs
    if node.op == "MaxPool":
        windows, _ = spatial_windows(x, attrs, -128)
        return windows.max(axis=(2, 3)).astype(np.int8)
    windows, mask = spatial_windows(x, attrs, node.quant["input_zero_point"])
    counted = mask == 1 if not attrs["count_include_pad"] else mask > 0
    total = np.where(counted[..., None], windows.astype(np.int64), 0).sum(axis=(2, 3))
    count = counted.sum(axis=(2, 3))[..., None]
    return saturate(rounding_divide(total, count))


def int8_softmax(node: Node, x: np.ndarray) -> np.ndarray:
    """Softmax through a table of exp(-d * input_scale) in Q16, output scale 1/256."""
    table = node.quant["exp_table"].astype(np.int64)
    rows = x.reshape(-1, node.attrs["row"]).astype(np.int64)
    distance = rows.max(axis=1, keepdims=True) - rows
    exps = table[distance]
    total = exps.sum(axis=1, keepdims=True)
    probability = (exps * 256 + total // 2) // total
    return saturate(probability - 128)


def run_quantized(graph: Graph, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate the quantized graph on physical int8 inputs; return every tensor by name."""
    values = {name: np.asarray(array, dtype=np.int8).reshape(-1) for name, array in zip(graph.inputs, inputs)}
    for node in graph.nodes:
        args = [values[name] for name in node.inputs]
        if node.op == "Conv":
            out = int8_conv(node, args[0])
        elif node.op == "Dense":
            out = int8_dense(node, args[0])
        elif node.op == "Add":
            out = int8_add(node, *args)
        elif node.op in ("AveragePool", "MaxPool"):
            out = int8_pool(node, args[0])
        elif node.op == "Softmax":
            out = int8_softmax(node, args[0])
        elif node.op == "Clamp":
            out = saturate(args[0].astype(np.int64), node.quant["act_min"], node.quant["act_max"])
        elif node.op == "Lut":
            out = node.quant["table"][args[0].astype(np.int64) + 128]
        elif node.op == "Transpose":
            source = graph.tensors[node.inputs[0]]
            out = np.transpose(args[0].reshape(source.shape), node.attrs["perm"])
        elif node.op == "Reshape":
            out = args[0]
        else:
            raise ValueError(f"run_quantized: no implementation of IR op {node.op}")
        values[node.outputs[0]] = np.ascontiguousarray(out).reshape(-1).astype(np.int8)
    return values
