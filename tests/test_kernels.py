"""Generated C kernels against the int8 reference, bit for bit.

Host compiles dominate the run time, so each test builds one simulator from a
graph with several branches, one graph output per kernel variant, and runs
random int8 inputs plus the extremes -128 and 127 through it.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from onnx import helper

from bonsai_mcu import BonsaiError
from bonsai_mcu.codegen import environment
from bonsai_mcu.quantize import QuantOptions
from bonsai_mcu.reference import rounding_divide, rounding_shift
from bonsai_mcu.verify import (STRICT_FLAGS, build_simulator, compare_outputs, find_compiler, reference_outputs,
                               run_simulator)

from graphs import compile_graph, initializer, make_model, save

try:
    HOST_CC = find_compiler()
except BonsaiError as missing:
    pytest.skip(str(missing), allow_module_level=True)

RNG = np.random.default_rng(2024)


def weights(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def initializers_of(arrays: dict[str, np.ndarray]) -> list:
    return [initializer(name, array) for name, array in arrays.items()]


def int8_samples(graph, count: int = 6, seed: int = 0) -> list[list[np.ndarray]]:
    """Physical int8 inputs: random ones, all -128, all 127, and alternating extremes."""
    rng = np.random.default_rng(seed)
    sizes = [graph.tensors[name].size for name in graph.inputs]
    samples = [[rng.integers(-128, 128, size=size).astype(np.int8) for size in sizes] for _ in range(count)]
    for sample in samples[:2]:
        for array in sample:
            array[::7] = -128
            array[3::7] = 127
    samples.append([np.full(size, -128, np.int8) for size in sizes])
    samples.append([np.full(size, 127, np.int8) for size in sizes])
    samples.append([np.where(np.arange(size) % 2 == 0, 127, -128).astype(np.int8) for size in sizes])
    return samples


def assert_bit_exact(model, tmp_path, options: QuantOptions | None = None, expected_ops=None):
    """Generate C for `model`, run it on the host and compare with reference.run_quantized."""
    path = save(model, tmp_path)
    rng = np.random.default_rng(1)
    constants = {init.name for init in model.graph.initializer}
    shapes = [[d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in model.graph.input if value.name not in constants]
    calibration = [[rng.standard_normal(shape) * 2.0 for shape in shapes] for _ in range(4)]
    graph, _, files = compile_graph(path, calibration, options)
    if expected_ops is not None:
        assert sorted({n.op for n in graph.nodes}) == sorted(expected_ops)

    executable = build_simulator(files, graph, tmp_path / "build")
    inputs = int8_samples(graph)
    expected = reference_outputs(graph, inputs)
    actual = run_simulator(executable, graph, inputs)
    mismatches = compare_outputs(expected, actual)
    described = [f"sample {m.sample}, output '{graph.onnx_outputs[m.output]}', element {m.index}: "
                 f"reference {m.expected}, C {m.actual}" for m in mismatches]
    assert not described, "\n".join(described)
    return graph


# -- Conv 2-D ----------------------------------------------------------------------

CONV_TENSORS = {
    "general_w": weights(5, 4, 3, 3), "general_b": weights(5),
    "strided_w": weights(3, 4, 3, 2), "strided_b": weights(3),
    "dilated_w": weights(4, 4, 3, 3),
    "grouped_w": weights(6, 2, 3, 3), "grouped_b": weights(6),
    "depthwise_w": weights(4, 1, 3, 3), "depthwise_b": weights(4),
    "multiplier_w": weights(8, 1, 3, 3), "multiplier_b": weights(8),
    "same_upper_w": weights(3, 4, 4, 4), "same_lower_w": weights(3, 4, 4, 4),
    "wide_pads_w": weights(2, 4, 3, 3), "wide_pads_b": weights(2),
    "zero_w": np.zeros((3, 4, 3, 3), np.float32), "zero_b": weights(3),
    "relu_w": weights(4, 4, 1, 1), "relu_b": weights(4),
    "relu6_w": weights(4, 4, 3, 3), "relu6_b": weights(4),
    "relu6_low": np.array(0.0, np.float32), "relu6_high": np.array(6.0, np.float32),
}


def conv_node(name: str, source: str, **attrs):
    inputs = [source, f"{name}_w"] + ([f"{name}_b"] if f"{name}_b" in CONV_TENSORS else [])
    return helper.make_node("Conv", inputs, [name], name=name, **attrs)


# One graph output per branch; "relu" and "relu6" end in an activation fused into the Conv.
CONV_NODES = [
    conv_node("general", "x", pads=[1, 1, 1, 1]),
    conv_node("strided", "x", strides=[2, 3], pads=[1, 0, 2, 1]),
    conv_node("dilated", "x", dilations=[2, 2], pads=[2, 1, 0, 2]),
    conv_node("grouped", "x", group=2, pads=[1, 0, 1, 0]),
    conv_node("depthwise", "x", group=4, strides=[2, 2], pads=[0, 1, 1, 0]),
    conv_node("multiplier", "x", group=4, pads=[1, 1, 1, 1]),
    conv_node("same_upper", "x", strides=[2, 2], auto_pad="SAME_UPPER"),
    conv_node("same_lower", "x", strides=[2, 2], auto_pad="SAME_LOWER"),
    conv_node("wide_pads", "x", strides=[3, 3], pads=[2, 2, 2, 2]),
    conv_node("zero", "x", pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["x", "relu_w", "relu_b"], ["relu_conv"], name="relu"),
    helper.make_node("Relu", ["relu_conv"], ["relu_out"], name="relu_act"),
    helper.make_node("Conv", ["x", "relu6_w", "relu6_b"], ["relu6_conv"], name="relu6", pads=[0, 1, 0, 1]),
    helper.make_node("Clip", ["relu6_conv", "relu6_low", "relu6_high"], ["relu6_out"], name="relu6_act"),
]
CONV_OUTPUTS = ["general", "strided", "dilated", "grouped", "depthwise", "multiplier", "same_upper", "same_lower",
                "wide_pads", "zero", "relu_out", "relu6_out"]


def conv_model():
    return make_model(CONV_NODES, [("x", [1, 4, 7, 6])], [(name, None) for name in CONV_OUTPUTS],
                      initializers_of(CONV_TENSORS))


@pytest.mark.parametrize("options", [
    QuantOptions(granularity="per-channel"),
    QuantOptions(granularity="per-tensor"),
    QuantOptions(granularity="group", group_size=5),
    QuantOptions(granularity="group", group_size=1),
    QuantOptions(int8_layers={"general", "strided", "grouped", "depthwise", "multiplier", "zero"}),
], ids=["per_channel", "per_tensor", "group5", "group1", "int8"])
def test_conv2d_variants(options, tmp_path):
    graph = assert_bit_exact(conv_model(), tmp_path, options, ["Conv"])
    activations = {n.name: n.attrs["activation"] for n in graph.nodes}
    assert activations["relu"] == ("clip", 0.0, float("inf"))
    assert activations["relu6"] == ("clip", 0.0, 6.0)


def test_conv_one_channel(tmp_path):
    arrays = {"single_w": weights(1, 1, 3, 3), "single_b": weights(1)}
    nodes = [helper.make_node("Conv", ["x", "single_w", "single_b"], ["y"], name="single", pads=[1, 0, 0, 1],
                              strides=[1, 2])]
    model = make_model(nodes, [("x", [1, 1, 5, 6])], [("y", None)], initializers_of(arrays))
    assert_bit_exact(model, tmp_path, QuantOptions(granularity="group", group_size=4))


def test_conv1d_and_pool1d(tmp_path):
    arrays = {"c1_w": weights(5, 3, 3), "c1_b": weights(5), "c1dw_w": weights(3, 1, 5), "c1d_w": weights(2, 3, 3)}
    nodes = [
        helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["strided"], name="strided", strides=[2], pads=[1, 2]),
        helper.make_node("Conv", ["x", "c1dw_w"], ["depthwise"], name="depthwise", group=3, auto_pad="SAME_UPPER"),
        helper.make_node("Conv", ["x", "c1d_w"], ["dilated"], name="dilated", dilations=[3], pads=[0, 3]),
        helper.make_node("AveragePool", ["x"], ["average"], name="average", kernel_shape=[3], strides=[2],
                         pads=[1, 1]),
        helper.make_node("MaxPool", ["x"], ["max"], name="max", kernel_shape=[2], strides=[2], ceil_mode=1),
    ]
    model = make_model(nodes, [("x", [1, 3, 11])], [(n.output[0], None) for n in nodes], initializers_of(arrays))
    assert_bit_exact(model, tmp_path, QuantOptions(granularity="per-channel"))


# -- Dense -------------------------------------------------------------------------


def dense_model():
    arrays = {"fc_b": weights(20, 7), "fc_c": weights(7), "one_b": weights(1, 20), "one_c": weights(1),
              "zero_b": np.zeros((20, 3), np.float32), "zero_c": weights(3), "rows_b": weights(20, 6)}
    nodes = [
        helper.make_node("Gemm", ["x", "fc_b", "fc_c"], ["fc"], name="fc"),
        helper.make_node("Gemm", ["x", "one_b", "one_c"], ["one"], name="one", transB=1, alpha=0.5),
        helper.make_node("Gemm", ["x", "zero_b", "zero_c"], ["zero_gemm"], name="zero"),
        helper.make_node("Relu", ["zero_gemm"], ["zero_relu"], name="zero_act"),
        helper.make_node("MatMul", ["rows", "rows_b"], ["rows_out"], name="rows_mm"),
    ]
    return make_model(nodes, [("x", [1, 20]), ("rows", [1, 3, 20])],
                      [("fc", None), ("one", None), ("zero_relu", None), ("rows_out", None)], initializers_of(arrays))


@pytest.mark.parametrize("options", [
    QuantOptions(granularity="per-channel"),
    QuantOptions(granularity="per-tensor"),
    QuantOptions(granularity="group", group_size=6),
    QuantOptions(granularity="group", group_size=64),
    QuantOptions(int8_layers={"fc", "one", "rows_mm"}),
], ids=["per_channel", "per_tensor", "group6", "group64", "int8"])
def test_dense_variants(options, tmp_path):
    assert_bit_exact(dense_model(), tmp_path, options, ["Dense"])


# -- Add ---------------------------------------------------------------------------


def test_add_broadcasting(tmp_path):
    nodes = [
        helper.make_node("Add", ["a", "same"], ["plain"], name="plain"),
        helper.make_node("Add", ["a", "row"], ["broadcast_row"], name="broadcast_row"),
        helper.make_node("Add", ["column", "a"], ["broadcast_column"], name="broadcast_column"),
        helper.make_node("Add", ["a", "vector"], ["lower_rank"], name="lower_rank"),
        helper.make_node("Add", ["column", "row"], ["outer"], name="outer"),
        helper.make_node("Add", ["a", "same"], ["sum"], name="relu_add"),
        helper.make_node("Relu", ["sum"], ["relu"], name="relu"),
    ]
    inputs = [("a", [1, 3, 4, 5]), ("same", [1, 3, 4, 5]), ("row", [1, 3, 1, 5]), ("column", [1, 1, 4, 1]),
              ("vector", [5])]
    model = make_model(nodes, inputs, [(name, None) for name in
                                       ("plain", "broadcast_row", "broadcast_column", "lower_rank", "outer", "relu")])
    assert_bit_exact(model, tmp_path, expected_ops=["Add", "Reshape"])


def test_add_channels_last(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "res_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["residual"], name="residual"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Add", ["c", "g"], ["per_channel"], name="per_channel"),
    ]
    model = make_model(nodes, [("x", [1, 4, 5, 6])], [("residual", None), ("per_channel", None)],
                       [initializer("res_w", weights(4, 4, 3, 3))])
    assert_bit_exact(model, tmp_path, expected_ops=["Conv", "Add", "AveragePool"])


# -- pooling -----------------------------------------------------------------------


def test_pool_variants(tmp_path):
    def pool(op, name, **attrs):
        return helper.make_node(op, ["x"], [name], name=name, **attrs)

    nodes = [
        pool("AveragePool", "avg", kernel_shape=[3, 3], strides=[2, 2]),
        pool("AveragePool", "avg_pads", kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 0]),
        pool("AveragePool", "avg_pads_counted", kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 0],
             count_include_pad=1),
        pool("AveragePool", "avg_ceil", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        pool("AveragePool", "avg_ceil_pads_counted", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             ceil_mode=1, count_include_pad=1),
        pool("MaxPool", "max", kernel_shape=[2, 2], strides=[2, 2]),
        pool("MaxPool", "max_pads_ceil", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1),
        pool("MaxPool", "max_overlap", kernel_shape=[3, 3], strides=[1, 1], pads=[2, 2, 2, 2]),
        pool("GlobalAveragePool", "global_avg"),
        pool("GlobalMaxPool", "global_max"),
    ]
    model = make_model(nodes, [("x", [1, 3, 8, 7])], [(n.output[0], None) for n in nodes], opset=13)
    assert_bit_exact(model, tmp_path, expected_ops=["AveragePool", "MaxPool"])


def test_pool_one_channel_after_conv(tmp_path):
    # Pooling keeps the input's scale and zero point, here a Conv output's (not 0).
    arrays = {"pool_w": weights(1, 2, 3, 3), "pool_b": np.array([3.0], np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "pool_w", "pool_b"], ["c"], name="conv"),
        helper.make_node("AveragePool", ["c"], ["avg"], name="avg", kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("MaxPool", ["c"], ["max"], name="max", kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
    ]
    model = make_model(nodes, [("x", [1, 2, 6, 6])], [("avg", None), ("max", None)], initializers_of(arrays))
    assert_bit_exact(model, tmp_path, expected_ops=["Conv", "AveragePool", "MaxPool"])


def test_classifier_chain(tmp_path):
    # Several kernels one after another in one arena: buffers are reused between layers.
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="depthwise", group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="residual"),
        helper.make_node("MaxPool", ["s"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax"),
    ]
    arrays = {"w1": weights(6, 3, 3, 3), "b1": weights(6), "w2": weights(6, 1, 3, 3),
              "w3": weights(4, 6), "b3": weights(4)}
    model = make_model(nodes, [("x", [1, 3, 9, 9])], [("y", None)], initializers_of(arrays))
    graph = assert_bit_exact(model, tmp_path)
    assert [n.op for n in graph.nodes if n.op != "Reshape"] == ["Conv", "Conv", "Add", "MaxPool", "AveragePool",
                                                                 "Dense", "Softmax"]


# -- softmax, clamp, tables, transpose -----------------------------------------------------


def test_elementwise_and_layout_ops(tmp_path):
    nodes = [
        helper.make_node("Softmax", ["x"], ["softmax_last"], name="softmax_last"),
        helper.make_node("Softmax", ["x"], ["softmax_channels"], name="softmax_channels", axis=1),
        helper.make_node("Sigmoid", ["x"], ["sigmoid"], name="sigmoid"),
        helper.make_node("Tanh", ["x"], ["tanh"], name="tanh"),
        helper.make_node("Relu", ["x"], ["relu"], name="relu"),
        helper.make_node("Clip", ["x", "low", "high"], ["clip"], name="clip"),
        helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Flatten", ["t"], ["transposed"], name="flatten"),
    ]
    inits = [initializer("low", np.array(-0.5, np.float32)), initializer("high", np.array(0.75, np.float32))]
    outputs = ["softmax_last", "softmax_channels", "sigmoid", "tanh", "relu", "clip", "transposed"]
    model = make_model(nodes, [("x", [1, 3, 4, 5])], [(name, None) for name in outputs], inits)
    assert_bit_exact(model, tmp_path, expected_ops=["Softmax", "Transpose", "Lut", "Clamp", "Reshape"])


def test_softmax_long_row(tmp_path):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="softmax")]
    model = make_model(nodes, [("x", [1, 1000])], [("y", None)])
    assert_bit_exact(model, tmp_path, expected_ops=["Softmax"])


# -- rounding helpers of the C header --------------------------------------------------------


def test_c_rounding_helpers_match_reference(tmp_path):
    header = environment().get_template("kernels/kernels.h.j2").render(
        banner="test", prefix="t", guard="T", kernels=[])
    (tmp_path / "t_kernels.h").write_text(header)
    shifts = [(3, 1), (-3, 1), (1, 1), (-1, 1), (6, 2), (-10, 2), (2**30 - 1, 31), (-(2**30), 31),
              (3 * 2**29, 30), (-(3 * 2**29), 30), (2**62, 62), (-(2**62), 62), (3 * 2**60, 61), (-(3 * 2**60), 61),
              (123456789012345, 17), (-123456789012345, 17)]
    divides = [(5, 2), (-5, 2), (1, 2), (-1, 2), (3, 6), (-3, 6), (7, 3), (-7, 3), (0, 9), (127 * 9, 9),
               (-128 * 9, 9), (127 * 9 + 5, 9), (-128 * 9 - 5, 9), (-128 * 49, 49)]
    clamps = [-(2**40), -129, -128, 0, 127, 128, 2**40]
    lines = ['#include <stdio.h>', '#include "t_kernels.h"', "int main(void)", "{"]
    for value, shift in shifts:
        lines.append(f'    printf("%lld\\n", (long long)t_rounding_shift(INT64_C({value}), {shift}));')
    for numerator, denominator in divides:
        lines.append(f'    printf("%ld\\n", (long)t_rounding_divide({numerator}, {denominator}));')
    for value in clamps:
        lines.append(f'    printf("%d\\n", (int)t_clamp(INT64_C({value}), -128, 127));')
    lines += ["    return 0;", "}"]
    (tmp_path / "main.c").write_text("\n".join(lines) + "\n")
    subprocess.run([*HOST_CC, *STRICT_FLAGS, "-I", str(tmp_path), str(tmp_path / "main.c"), "-o",
                    str(tmp_path / "rounding")], check=True, capture_output=True, text=True)
    printed = [int(v) for v in subprocess.run([str(tmp_path / "rounding")], check=True, capture_output=True,
                                              text=True).stdout.split()]

    expected = [int(rounding_shift(np.array([v]), s)[0]) for v, s in shifts]
    expected += [int(rounding_divide(np.array([n]), np.array([d]))[0]) for n, d in divides]
    expected += [int(np.clip(v, -128, 127)) for v in clamps]
    assert printed == expected
