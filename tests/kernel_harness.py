"""Support of the property tests: the generic kernel harness and random cases.

One build of kernel_harness.c (the kernel templates rendered with prefix
"prop", plus a main that reads the kernel and its parameters at run time)
serves every example. A case generator draws a kernel's shapes, parameters
and data through a `Draw`, which is either hypothesis (`HypothesisDraw`) or a
seeded numpy generator (`NumpyDraw`, for tests that need fixed examples), and
returns the harness request together with the reference's output.
"""

from __future__ import annotations

import itertools
import math
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bonsai_mcu.codegen import element_strides, environment, padded6
from bonsai_mcu.codegen_f32 import UNARY_DEFAULTS, UNARY_FUNCTIONS
from bonsai_mcu.ir import Node, QParams
from bonsai_mcu.pack import pack_trits
from bonsai_mcu.quantize import exp_table
from bonsai_mcu.reference import (float_add, float_conv, float_dense, float_pool, float_softmax, int8_add,
                                  int8_conv, int8_dense, int8_pool, int8_softmax, lut_function, saturate)
from bonsai_mcu.verify import STRICT_FLAGS, find_compiler, sanitizer_flags

HARNESS_SOURCE = Path(__file__).resolve().parent / "kernel_harness.c"
PREFIX = "prop"
KERNELS = ["add", "conv2d", "dense", "elementwise", "pool", "softmax", "transpose",
           "add_f32", "conv2d_f32", "dense_f32", "elementwise_f32", "pool_f32", "softmax_f32", "transpose_f32"]

# Kernel ids of kernel_harness.c.
CONV2D, DENSE, ADD, AVERAGE_POOL, MAX_POOL, SOFTMAX, CLAMP, LOOKUP, TRANSPOSE = range(1, 10)
(CONV2D_F32, DENSE_F32, ADD_F32, AVERAGE_POOL_F32, MAX_POOL_F32, SOFTMAX_F32, CLAMP_F32, UNARY_F32,
 TRANSPOSE_F32) = range(11, 20)

FLOAT_EPSILON = 2.0 ** -23


def render_kernels(prefix: str = PREFIX) -> dict[str, str]:
    """Render kernels.h and every kernel source, as codegen does for a model using all of them."""
    env = environment()
    context = {"banner": "Property-test build of the bonsai-mcu kernels.", "prefix": prefix,
               "guard": prefix.upper(), "kernels": KERNELS}
    files = {f"{prefix}_kernels.h": env.get_template("kernels/kernels.h.j2").render(context)}
    for kernel in KERNELS:
        files[f"{prefix}_{kernel}.c"] = env.get_template(f"kernels/{kernel}.c.j2").render(context)
    return files


def build_harness(folder: Path, files: dict[str, str] | None = None, flags: list[str] | None = None) -> "Harness":
    """Compile the harness with `files` (default: the rendered kernels) into `folder`.

    Sanitizers follow BONSAI_SANITIZE, as for the host simulator builds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = render_kernels() if files is None else files
    for name, text in files.items():
        (folder / name).write_text(text)
    executable = folder / "kernel_harness"
    sources = [str(HARNESS_SOURCE)] + [str(folder / name) for name in sorted(files) if name.endswith(".c")]
    command = (find_compiler() + STRICT_FLAGS + ["-O1"] + sanitizer_flags() + (flags or [])
               + ["-I", str(folder)] + sources + ["-o", str(executable)])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"harness build failed: {result.stderr[:3000]}")
    return Harness(executable)


@dataclass
class Request:
    kernel: int
    params: list[int]
    arrays: list[np.ndarray]
    output_dtype: type
    output_count: int

    def encode(self) -> bytes:
        words = [self.kernel, len(self.params), *self.params, len(self.arrays)]
        data = struct.pack(f"={len(words)}i", *words)
        for array in self.arrays:
            data += struct.pack("=2i", array.dtype.itemsize, array.size) + np.ascontiguousarray(array).tobytes()
        return data + struct.pack("=2i", np.dtype(self.output_dtype).itemsize, self.output_count)


@dataclass
class Harness:
    executable: Path
    counter: itertools.count = field(default_factory=itertools.count)

    def run(self, request: Request) -> np.ndarray:
        """Run one request; raise RuntimeError with the harness's stderr (sanitizer reports) on failure."""
        index = next(self.counter)
        request_path = self.executable.parent / f"request{index}.bin"
        output_path = self.executable.parent / f"output{index}.bin"
        request_path.write_bytes(request.encode())
        try:
            result = subprocess.run([str(self.executable), str(request_path), str(output_path)],
                                    capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise RuntimeError(f"harness exited with status {result.returncode}: {result.stderr[:4000]}")
            return np.frombuffer(output_path.read_bytes(), dtype=request.output_dtype).copy()
        finally:
            request_path.unlink(missing_ok=True)
            output_path.unlink(missing_ok=True)


@dataclass
class Case:
    """A harness request and what the reference computes for it."""

    name: str
    request: Request
    expected: np.ndarray
    # Largest allowed |C - reference| per element: None means bit-exact.
    tolerance: np.ndarray | None = None

    def check(self, harness: Harness) -> None:
        got = harness.run(self.request)
        want = self.expected.reshape(-1)
        assert got.shape == want.shape, f"{self.name}: output has {got.size} values, expected {want.size}"
        if self.tolerance is None:
            differ = np.flatnonzero(got != want)
        else:
            error = np.abs(got.astype(np.float64) - want)
            differ = np.flatnonzero(~(error <= np.broadcast_to(self.tolerance.reshape(-1), want.shape))
                                    & ~(np.isnan(got) & np.isnan(want)) & ~(got == want))
        if differ.size:
            i = int(differ[0])
            raise AssertionError(f"{self.name}: {differ.size} of {want.size} values differ; first at {i}: "
                                 f"C {got[i]!r}, reference {want[i]!r}; params {self.request.params}")


# -- drawing values ------------------------------------------------------------


class NumpyDraw:
    """Draw from a seeded numpy generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def choice(self, options):
        return options[self.integer(0, len(options) - 1)]

    def integers(self, count: int, low: int, high: int) -> np.ndarray:
        return self.rng.integers(low, high + 1, size=count, dtype=np.int64)

    def floats(self, count: int, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, size=count).astype(np.float32)


class HypothesisDraw:
    """Draw through hypothesis, so failing examples shrink."""

    def __init__(self, data):
        from hypothesis import strategies

        self.data = data
        self.strategies = strategies

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(self.strategies.integers(low, high))

    def choice(self, options):
        return self.data.draw(self.strategies.sampled_from(list(options)))

    def integers(self, count: int, low: int, high: int) -> np.ndarray:
        from hypothesis.extra.numpy import arrays

        return self.data.draw(arrays(np.int64, count, elements=self.strategies.integers(low, high)))

    def floats(self, count: int, low: float, high: float) -> np.ndarray:
        from hypothesis.extra.numpy import arrays

        elements = self.strategies.floats(low, high, width=32, allow_nan=False, allow_infinity=False)
        return self.data.draw(arrays(np.float32, count, elements=elements))


def draw_int8(draw, count: int) -> np.ndarray:
    """Random int8 values, or one of the extremes everywhere: -128, 127, 0, or alternating -128/127."""
    fill = draw.choice(["random", "random", "random", "min", "max", "zero", "alternate"])
    if fill == "min":
        return np.full(count, -128, np.int8)
    if fill == "max":
        return np.full(count, 127, np.int8)
    if fill == "zero":
        return np.zeros(count, np.int8)
    if fill == "alternate":
        return np.where(np.arange(count) % 2 == 0, -128, 127).astype(np.int8)
    return draw.integers(count, -128, 127).astype(np.int8)


def draw_weights(draw, shape, weight_format: str) -> np.ndarray:
    """Trits or int8 weights [O, K]: random, all zero, or all at one extreme."""
    count = int(np.prod(shape))
    fill = draw.choice(["random", "random", "random", "zero", "extreme"])
    low, high = (-1, 1) if weight_format == "ternary" else (-128, 127)
    if fill == "zero":
        values = np.zeros(count, np.int64)
    elif fill == "extreme":
        values = np.full(count, draw.choice([low, high]), np.int64)
    else:
        values = draw.integers(count, low, high)
    return values.astype(np.int8).reshape(shape)


def draw_range(draw) -> tuple[int, int]:
    """An activation clamp [act_min, act_max] within int8, often the full range."""
    if draw.choice([True, False]):
        return -128, 127
    low = draw.integer(-128, 127)
    return low, draw.integer(low, 127)


def draw_bounds(draw) -> tuple | None:
    """A float clamp ("clip", low, high) with infinite sides, or None."""
    kind = draw.choice(["none", "relu", "relu6", "random"])
    if kind == "none":
        return None
    if kind == "relu":
        return ("clip", 0.0, math.inf)
    if kind == "relu6":
        return ("clip", 0.0, 6.0)
    low = float(draw.floats(1, -4.0, 4.0)[0])
    # The C stores the bounds as float32.
    return ("clip", low, float(np.float32(low + float(draw.floats(1, 0.0, 4.0)[0]))))


def bounds_request(activation) -> tuple[list[int], np.ndarray]:
    """Return the has_low and has_high flags and the [low, high] floats of a prop_bounds_f32."""
    if activation is None:
        return [0, 0], np.zeros(2, np.float32)
    _, low, high = activation
    flags = [int(not math.isinf(low)), int(not math.isinf(high))]
    values = np.array([0.0 if math.isinf(low) else low, 0.0 if math.isinf(high) else high], np.float32)
    return flags, values


def draw_window(draw, max_kernel: int, dilation: bool, ceil: bool = False) -> dict:
    """Draw one spatial axis: input size, kernel, stride, dilation, pads (each below the extent) and output size."""
    kernel = draw.integer(1, max_kernel)
    stride = draw.integer(1, 3)
    dilate = draw.integer(1, 2) if dilation else 1
    extent = (kernel - 1) * dilate + 1
    begin, end = draw.integer(0, extent - 1), draw.integer(0, extent - 1)
    size = draw.integer(max(1, extent - begin - end), 6)
    span = size + begin + end - extent
    out = span // stride + 1
    if ceil and draw.choice([False, True]):
        out = -(-span // stride) + 1
        # The last window must start inside the input or the leading padding (the importer's ceil_mode rule).
        if (out - 1) * stride >= size + begin:
            out -= 1
    return {"size": size, "kernel": kernel, "stride": stride, "dilation": dilate, "begin": begin, "end": end,
            "out": out}


def draw_spatial(draw, max_kernel: int = 3, dilation: bool = True, ceil: bool = False) -> dict:
    """Draw the attrs of a 2-D window op (1-D when the height is 1), as the importer stores them."""
    rows = draw_window(draw, max_kernel, dilation, ceil) if draw.choice([True, True, False]) else \
        {"size": 1, "kernel": 1, "stride": 1, "dilation": 1, "begin": 0, "end": 0, "out": 1}
    cols = draw_window(draw, max_kernel, dilation, ceil)
    return {
        "in_h": rows["size"], "in_w": cols["size"], "out_h": rows["out"], "out_w": cols["out"],
        "kernel": (rows["kernel"], cols["kernel"]), "strides": (rows["stride"], cols["stride"]),
        "dilations": (rows["dilation"], cols["dilation"]),
        "pads": (rows["begin"], cols["begin"], rows["end"], cols["end"]),
    }


def conv_geometry(attrs: dict) -> list[int]:
    kernel_h, kernel_w = attrs["kernel"]
    stride_h, stride_w = attrs["strides"]
    dilation_h, dilation_w = attrs["dilations"]
    pad_top, pad_left, _, _ = attrs["pads"]
    return [attrs["in_h"], attrs["in_w"], attrs["in_channels"], attrs["out_h"], attrs["out_w"], attrs["out_channels"],
            kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, attrs["group"]]


def pool_fields(attrs: dict) -> list[int]:
    kernel_h, kernel_w = attrs["kernel"]
    stride_h, stride_w = attrs["strides"]
    return [attrs["in_h"], attrs["in_w"], attrs["in_channels"], attrs["out_h"], attrs["out_w"], kernel_h, kernel_w,
            stride_h, stride_w, *attrs["pads"], attrs["count_include_pad"]]


# -- int8 and ternary kernels ---------------------------------------------------


def draw_requant(draw, out_channels: int, depth: int, weight_format: str) -> tuple[dict, list[np.ndarray], list[int]]:
    """Draw weights and requantization parameters; return the node's quant, the C arrays and params."""
    values = draw_weights(draw, (out_channels, depth), weight_format)
    group_size = draw.choice([depth, depth, draw.integer(1, depth)])
    groups = -(-depth // group_size)
    per_tensor = draw.choice([0, 1])
    # Multipliers span the int32 range; the int64 sum stays exact for the depths drawn here.
    if per_tensor:
        matrix = np.full((out_channels, groups), draw.integer(-(2 ** 31) + 1, 2 ** 31 - 1), np.int64)
        stored = matrix[:1, :1].reshape(-1)
    else:
        matrix = draw.integers(out_channels * groups, -(2 ** 31) + 1, 2 ** 31 - 1).reshape(out_channels, groups)
        stored = matrix.reshape(-1)
    bias = draw.integers(out_channels, -(2 ** 40), 2 ** 40)
    shift = draw.integer(1, 48)
    input_zero_point, output_zero_point = draw.integer(-128, 127), draw.integer(-128, 127)
    act_min, act_max = draw_range(draw)
    quant = {"values": values, "group_size": group_size, "multiplier_matrix": matrix, "bias_fixed": bias,
             "shift": shift, "input_zero_point": input_zero_point, "output_zero_point": output_zero_point,
             "act_min": act_min, "act_max": act_max}
    stored_weights = pack_trits(values) if weight_format == "ternary" else values.reshape(-1)
    arrays = [stored_weights, stored.astype(np.int32), bias.astype(np.int64)]
    params = [shift, group_size, input_zero_point, output_zero_point, act_min, act_max,
              1 if weight_format == "ternary" else 0, per_tensor]
    return quant, arrays, params


def conv_case(draw, weight_format: str) -> Case:
    attrs = draw_spatial(draw)
    group = draw.integer(1, 3)
    attrs.update(group=group, in_channels=group * draw.integer(1, 3), out_channels=group * draw.integer(1, 3),
                 activation=None)
    kernel_h, kernel_w = attrs["kernel"]
    depth = kernel_h * kernel_w * attrs["in_channels"] // group
    quant, arrays, params = draw_requant(draw, attrs["out_channels"], depth, weight_format)
    x = draw_int8(draw, attrs["in_h"] * attrs["in_w"] * attrs["in_channels"])
    node = Node("Conv", "conv", ["x"], ["y"], attrs, quant=quant)
    expected = int8_conv(node, x)
    request = Request(CONV2D, params + conv_geometry(attrs), arrays + [x], np.int8, expected.size)
    return Case(f"conv2d ({weight_format})", request, expected)


def dense_case(draw, weight_format: str) -> Case:
    rows, depth, out_features = draw.integer(1, 3), draw.integer(1, 40), draw.integer(1, 6)
    quant, arrays, params = draw_requant(draw, out_features, depth, weight_format)
    x = draw_int8(draw, rows * depth)
    node = Node("Dense", "dense", ["x"], ["y"], {"rows": rows, "activation": None}, quant=quant)
    expected = int8_dense(node, x)
    request = Request(DENSE, params + [rows, depth, out_features], arrays + [x], np.int8, expected.size)
    return Case(f"dense ({weight_format})", request, expected)


def draw_broadcast_shapes(draw) -> tuple[tuple, tuple, tuple]:
    """An output shape of rank 1 to 6 and two input shapes that broadcast to it (1 on broadcast axes)."""
    rank = draw.integer(1, 6)
    out_shape = tuple(draw.integer(1, 4) for _ in range(rank))
    shapes = []
    for _ in range(2):
        shapes.append(tuple(d if draw.choice([True, True, False]) else 1 for d in out_shape))
    # Both inputs may have 1 where out_shape does not; the output is what they broadcast to.
    return tuple(np.broadcast_shapes(*shapes)), shapes[0], shapes[1]


def broadcast_strides(shape, out_shape) -> list[int]:
    strides = element_strides(shape)
    return padded6([0 if d == 1 and o != 1 else s for d, o, s in zip(shape, out_shape, strides)], 0)


def add_case(draw) -> Case:
    out_shape, a_shape, b_shape = draw_broadcast_shapes(draw)
    a, b = draw_int8(draw, int(np.prod(a_shape))), draw_int8(draw, int(np.prod(b_shape)))
    act_min, act_max = draw_range(draw)
    quant = {"a_zero_point": draw.integer(-128, 127), "b_zero_point": draw.integer(-128, 127),
             "a_multiplier": draw.integer(-(2 ** 31) + 1, 2 ** 31 - 1),
             "b_multiplier": draw.integer(-(2 ** 31) + 1, 2 ** 31 - 1), "shift": draw.integer(1, 48),
             "output_zero_point": draw.integer(-128, 127), "act_min": act_min, "act_max": act_max}
    node = Node("Add", "add", ["a", "b"], ["y"], {"a_shape": a_shape, "b_shape": b_shape}, quant=quant)
    expected = int8_add(node, a, b)
    params = (padded6(out_shape, 1) + broadcast_strides(a_shape, out_shape) + broadcast_strides(b_shape, out_shape)
              + [quant[k] for k in ("a_zero_point", "b_zero_point", "a_multiplier", "b_multiplier", "shift",
                                    "output_zero_point", "act_min", "act_max")])
    return Case("add", Request(ADD, params, [a, b], np.int8, expected.size), expected)


def pool_attrs(draw) -> dict:
    attrs = draw_spatial(draw, dilation=False, ceil=True)
    attrs.update(in_channels=draw.integer(1, 4), count_include_pad=draw.choice([0, 1]))
    return attrs


def pool_case(draw, op: str) -> Case:
    attrs = pool_attrs(draw)
    x = draw_int8(draw, attrs["in_h"] * attrs["in_w"] * attrs["in_channels"])
    zero_point = draw.integer(-128, 127)
    node = Node(op, "pool", ["x"], ["y"], attrs, quant={"input_zero_point": zero_point})
    expected = int8_pool(node, x)
    kernel = AVERAGE_POOL if op == "AveragePool" else MAX_POOL
    request = Request(kernel, pool_fields(attrs) + [zero_point], [x], np.int8, expected.size)
    return Case(op, request, expected)


def softmax_case(draw) -> Case:
    rows, row = draw.integer(1, 3), draw.choice([1, 2, draw.integer(1, 40), draw.integer(1, 400)])
    scale = float(draw.choice([1.0 / 256.0, 0.05, 0.5, 4.0]))
    table = exp_table(QParams(scale, 0))
    x = draw_int8(draw, rows * row)
    node = Node("Softmax", "softmax", ["x"], ["y"], {"row": row}, quant={"exp_table": table})
    expected = int8_softmax(node, x)
    return Case("softmax", Request(SOFTMAX, [rows, row], [table.astype(np.uint32), x], np.int8, expected.size),
                expected)


def clamp_case(draw) -> Case:
    count = draw.integer(1, 64)
    low, high = draw_range(draw)
    x = draw_int8(draw, count)
    expected = saturate(x.astype(np.int64), low, high)
    return Case("clamp", Request(CLAMP, [count, low, high], [x], np.int8, count), expected)


def lookup_case(draw) -> Case:
    count = draw.integer(1, 64)
    table = draw.integers(256, -128, 127).astype(np.int8)
    x = draw_int8(draw, count)
    expected = table[x.astype(np.int64) + 128]
    return Case("lookup", Request(LOOKUP, [count], [table, x], np.int8, count), expected)


def draw_transpose(draw) -> tuple[tuple, tuple]:
    rank = draw.integer(1, 6)
    shape = tuple(draw.integer(1, 4) for _ in range(rank))
    order = list(range(rank))
    for i in range(rank - 1, 0, -1):
        j = draw.integer(0, i)
        order[i], order[j] = order[j], order[i]
    return shape, tuple(order)


def transpose_params(shape, perm) -> list[int]:
    strides = element_strides(shape)
    return padded6([shape[axis] for axis in perm], 1) + padded6([strides[axis] for axis in perm], 0)


def transpose_case(draw) -> Case:
    shape, perm = draw_transpose(draw)
    x = draw_int8(draw, int(np.prod(shape)))
    expected = np.transpose(x.reshape(shape), perm)
    return Case("transpose", Request(TRANSPOSE, transpose_params(shape, perm), [x], np.int8, x.size), expected)


# -- float32 kernels -------------------------------------------------------------


def draw_float32(draw, count: int, limit: float = 8.0) -> np.ndarray:
    """Random floats in [-limit, limit], or all zero."""
    if draw.choice([False, False, False, True]):
        return np.zeros(count, np.float32)
    return draw.floats(count, -limit, limit)


def sum_tolerance(magnitude: np.ndarray, terms: int) -> np.ndarray:
    """Bound of float32 rounding in a sum of `terms` products whose absolute values add up to `magnitude`."""
    return (terms + 2) * FLOAT_EPSILON * magnitude + 1e-30


def as_float64_node(node: Node) -> Node:
    """Return a copy of `node` with float32-rounded weights and bias, as the C stores them."""
    weights = None if node.weights is None else node.weights.astype(np.float32).astype(np.float64)
    bias = None if node.bias is None else node.bias.astype(np.float32).astype(np.float64)
    return Node(node.op, node.name, node.inputs, node.outputs, dict(node.attrs), weights, bias)


def magnitude_node(node: Node) -> Node:
    """Return the node with |weights|, |bias| and no clamp: run on |x|, it adds up the magnitudes of the terms."""
    attrs = dict(node.attrs, activation=None)
    return Node(node.op, node.name, node.inputs, node.outputs, attrs, np.abs(node.weights), np.abs(node.bias))


def conv_f32_case(draw) -> Case:
    attrs = draw_spatial(draw)
    group = draw.integer(1, 3)
    attrs.update(group=group, in_channels=group * draw.integer(1, 3), out_channels=group * draw.integer(1, 3),
                 activation=draw_bounds(draw))
    kernel_h, kernel_w = attrs["kernel"]
    per_group = attrs["in_channels"] // group
    weights = draw_float32(draw, attrs["out_channels"] * kernel_h * kernel_w * per_group, 2.0)
    weights = weights.reshape(attrs["out_channels"], kernel_h, kernel_w, per_group)
    bias = draw_float32(draw, attrs["out_channels"])
    x = draw_float32(draw, attrs["in_h"] * attrs["in_w"] * attrs["in_channels"])
    node = as_float64_node(Node("Conv", "conv", ["x"], ["y"], attrs, weights, bias))
    expected = float_conv(node, x.astype(np.float64))
    tolerance = sum_tolerance(float_conv(magnitude_node(node), np.abs(x.astype(np.float64))),
                              kernel_h * kernel_w * per_group)
    flags, bounds = bounds_request(attrs["activation"])
    request = Request(CONV2D_F32, conv_geometry(attrs) + flags, [weights.reshape(-1), bias, x, bounds], np.float32,
                      expected.size)
    return Case("conv2d_f32", request, expected, tolerance)


def dense_f32_case(draw) -> Case:
    rows, depth, out_features = draw.integer(1, 3), draw.integer(1, 40), draw.integer(1, 6)
    weights = draw_float32(draw, out_features * depth, 2.0).reshape(out_features, depth)
    bias = draw_float32(draw, out_features)
    x = draw_float32(draw, rows * depth)
    attrs = {"rows": rows, "activation": draw_bounds(draw)}
    node = as_float64_node(Node("Dense", "dense", ["x"], ["y"], attrs, weights, bias))
    expected = float_dense(node, x.astype(np.float64))
    tolerance = sum_tolerance(float_dense(magnitude_node(node), np.abs(x.astype(np.float64))), depth)
    flags, bounds = bounds_request(attrs["activation"])
    request = Request(DENSE_F32, [rows, depth, out_features] + flags, [weights.reshape(-1), bias, x, bounds],
                      np.float32, expected.size)
    return Case("dense_f32", request, expected, tolerance)


def add_f32_case(draw) -> Case:
    out_shape, a_shape, b_shape = draw_broadcast_shapes(draw)
    a, b = draw_float32(draw, int(np.prod(a_shape))), draw_float32(draw, int(np.prod(b_shape)))
    attrs = {"a_shape": a_shape, "b_shape": b_shape, "activation": draw_bounds(draw)}
    node = Node("Add", "add", ["a", "b"], ["y"], attrs)
    expected = float_add(node, a.astype(np.float64), b.astype(np.float64))
    magnitude = np.abs(a.astype(np.float64).reshape(a_shape)) + np.abs(b.astype(np.float64).reshape(b_shape))
    flags, bounds = bounds_request(attrs["activation"])
    params = (padded6(out_shape, 1) + broadcast_strides(a_shape, out_shape) + broadcast_strides(b_shape, out_shape)
              + flags)
    return Case("add_f32", Request(ADD_F32, params, [a, b, bounds], np.float32, expected.size), expected,
                sum_tolerance(magnitude, 1))


def pool_f32_case(draw, op: str) -> Case:
    attrs = pool_attrs(draw)
    x = draw_float32(draw, attrs["in_h"] * attrs["in_w"] * attrs["in_channels"])
    node = Node(op, "pool", ["x"], ["y"], attrs)
    expected = float_pool(node, x.astype(np.float64))
    kernel_h, kernel_w = attrs["kernel"]
    if op == "MaxPool":
        tolerance = np.zeros_like(expected)
    else:
        tolerance = sum_tolerance(float_pool(node, np.abs(x.astype(np.float64))), kernel_h * kernel_w)
    kernel = AVERAGE_POOL_F32 if op == "AveragePool" else MAX_POOL_F32
    return Case(f"{op} f32", Request(kernel, pool_fields(attrs), [x], np.float32, expected.size), expected,
                tolerance)


def softmax_f32_case(draw) -> Case:
    rows, row = draw.integer(1, 3), draw.choice([1, 2, draw.integer(1, 40), draw.integer(1, 400)])
    x = draw_float32(draw, rows * row, draw.choice([1.0, 20.0, 80.0]))
    node = Node("Softmax", "softmax", ["x"], ["y"], {"row": row})
    expected = float_softmax(node, x.astype(np.float64))
    # exp is within 2 ulp of libm; the float32 difference x - max rounds by up to |x - max| ulp of 1 and
    # exp turns that into a relative error; the row sum adds `row` roundings, the division one more.
    distance = np.abs(x.astype(np.float64).reshape(rows, row) - x.reshape(rows, row).max(axis=1, keepdims=True))
    tolerance = (row + 8 + distance.reshape(expected.shape)) * FLOAT_EPSILON * expected + 1e-30
    return Case("softmax_f32", Request(SOFTMAX_F32, [rows, row], [x], np.float32, expected.size), expected,
                tolerance)


def clamp_f32_case(draw) -> Case:
    count = draw.integer(1, 64)
    activation = draw_bounds(draw) or ("clip", -math.inf, math.inf)
    x = draw_float32(draw, count)
    flags, bounds = bounds_request(activation)
    expected = np.clip(x.astype(np.float64), activation[1], activation[2])
    return Case("clamp_f32", Request(CLAMP_F32, [count] + flags, [x, bounds], np.float32, count), expected,
                np.zeros(count))


def unary_f32_case(draw) -> Case:
    function = draw.choice(sorted(UNARY_FUNCTIONS))
    count = draw.integer(1, 64)
    x = draw_float32(draw, count, draw.choice([1.0, 10.0, 100.0]))
    alpha, beta = UNARY_DEFAULTS.get(function, (0.0, 0.0))
    if function in ("LeakyRelu", "Elu", "HardSigmoid"):
        alpha = float(draw.floats(1, 0.0, 2.0)[0])
    alpha, beta = float(np.float32(alpha)), float(np.float32(beta))
    wide = x.astype(np.float64)
    expected = lut_function(function, {"alpha": alpha, "beta": beta})(wide)
    # exp, expm1 and log1p are within 4 ulp of libm (measured on x86-64); 16 ulp leaves room for the
    # compositions. The affine part alpha * x + beta of the hard functions rounds on its own magnitude,
    # and HardSwish multiplies that error by x. Subnormal results carry an absolute error.
    affine = np.abs(alpha * wide) + abs(beta)
    tolerance = 16 * FLOAT_EPSILON * (np.abs(expected) + affine * (1.0 + np.abs(wide))) + 1e-37
    code = list(UNARY_FUNCTIONS).index(function)
    request = Request(UNARY_F32, [code, count], [x, np.array([alpha, beta], np.float32)], np.float32, count)
    return Case(f"unary_f32 {function}", request, expected, tolerance)


def transpose_f32_case(draw) -> Case:
    shape, perm = draw_transpose(draw)
    x = draw_float32(draw, int(np.prod(shape)))
    expected = np.transpose(x.reshape(shape), perm).astype(np.float64)
    return Case("transpose_f32", Request(TRANSPOSE_F32, transpose_params(shape, perm), [x], np.float32, x.size),
                expected, np.zeros(x.size))


# Every case generator, by the kernel it tests.
CASES = {
    "conv2d ternary": lambda draw: conv_case(draw, "ternary"),
    "conv2d int8": lambda draw: conv_case(draw, "int8"),
    "dense ternary": lambda draw: dense_case(draw, "ternary"),
    "dense int8": lambda draw: dense_case(draw, "int8"),
    "add": add_case,
    "average_pool": lambda draw: pool_case(draw, "AveragePool"),
    "max_pool": lambda draw: pool_case(draw, "MaxPool"),
    "softmax": softmax_case,
    "clamp": clamp_case,
    "lookup": lookup_case,
    "transpose": transpose_case,
    "conv2d_f32": conv_f32_case,
    "dense_f32": dense_f32_case,
    "add_f32": add_f32_case,
    "average_pool_f32": lambda draw: pool_f32_case(draw, "AveragePool"),
    "max_pool_f32": lambda draw: pool_f32_case(draw, "MaxPool"),
    "softmax_f32": softmax_f32_case,
    "clamp_f32": clamp_f32_case,
    "unary_f32": unary_f32_case,
    "transpose_f32": transpose_f32_case,
}
