"""Fast kernels (bonsai_mcu.kernels) against the int8 reference, bit for bit.

Each test builds one graph with several branches, checks which kernel every branch got,
renders it for a target and runs it on the host. There the DSP variants run their C paths,
because the intrinsics and inline assembly only build for Armv7E-M. The tests at the end run
the same graphs on an emulated Cortex-M4, where the assembly runs, when QEMU is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from bonsai_mcu import BonsaiError
from bonsai_mcu.codegen import render
from bonsai_mcu.importer import import_onnx
from bonsai_mcu.kernels import (LUT_PASS_GROUPS, choose_kernels, depthwise_plane, depthwise_scratch, lut_layout,
                                lut_scratch, sad_patch_bytes, sad_scratch)
from bonsai_mcu.pack import unpack_trits
from bonsai_mcu.pipeline import Compiled, compile_model
from bonsai_mcu.plan import plan_graph
from bonsai_mcu.quantize import QuantOptions, quantize
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import (STRICT_FLAGS, build_simulator, compare_outputs, find_compiler, reference_outputs,
                               run_simulator)

from graphs import initializer, make_model, save

try:
    HOST_CC = find_compiler()
except BonsaiError as missing:
    pytest.skip(str(missing), allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
# Room for kernel scratch beyond the plain plan: the shape tests want every branch on a fast
# kernel, which a graph of parallel branches would otherwise leave no free bytes for.
ROOMY = 16384
SHARED = ROOT.parent / "shared" / "models"
RNG = np.random.default_rng(7)


def weights(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def int8_samples(graph, count: int = 4, seed: int = 0) -> list[list[np.ndarray]]:
    """Physical int8 inputs: random ones, then all -128 and all 127."""
    rng = np.random.default_rng(seed)
    sizes = [graph.tensors[name].size for name in graph.inputs]
    samples = [[rng.integers(-128, 128, size=size).astype(np.int8) for size in sizes] for _ in range(count)]
    samples.append([np.full(size, -128, np.int8) for size in sizes])
    samples.append([np.full(size, 127, np.int8) for size in sizes])
    return samples


def compile_for(model, tmp_path: Path, target: str, options: QuantOptions | None = None, edit=None,
                name: str = "fast", extra_scratch: int = 0) -> Compiled:
    """Import, quantize (standard-normal calibration), choose kernels, plan and render.

    edit(graph), when given, runs after quantization and may change integer parameters.
    """
    graph = import_onnx(save(model, tmp_path, name), name)
    rng = np.random.default_rng(3)
    calibration = [[rng.standard_normal(graph.tensors[name].logical_shape) for name in graph.inputs]
                   for _ in range(6)]
    quantize(graph, options or QuantOptions(), calibration)
    if edit is not None:
        edit(graph)
    spec = load_target(target)
    choices = choose_kernels(graph, spec, extra_scratch)
    plan = plan_graph(graph, max(spec.alignment, 4), choices)
    return Compiled(graph, plan, render(graph, plan, spec, graph.name, choices), spec, graph.name, choices)


def kernels_by_node(compiled: Compiled) -> dict[str, str]:
    return {node.name: choice.kernel for node, choice in zip(compiled.graph.nodes, compiled.kernels)}


def assert_host_exact(compiled: Compiled, tmp_path: Path) -> None:
    inputs = int8_samples(compiled.graph)
    expected = reference_outputs(compiled.graph, inputs)
    executable = build_simulator(compiled.files, compiled.graph, tmp_path / "host")
    mismatches = compare_outputs(expected, run_simulator(executable, compiled.graph, inputs))
    assert not mismatches, mismatches[:3]


# -- graphs ---------------------------------------------------------------------------


def conv_model():
    """Convolutions with one group on a [1, 6, 7, 9] input: odd patch lengths, padding on
    every edge, strides, dilation, one output channel, ReLU, ReLU6, a clip to [0.5, 1] (its
    lower bound above the output zero point) and no activation."""
    arrays = {}
    nodes = []
    outputs = []

    def conv(name, out_channels, kernel, activation=None, **attrs):
        arrays[f"{name}_w"], arrays[f"{name}_b"] = weights(out_channels, 6, *kernel), weights(out_channels)
        output = name if activation is None else f"{name}_conv"
        nodes.append(helper.make_node("Conv", ["x", f"{name}_w", f"{name}_b"], [output], name=name, **attrs))
        if activation == "relu":
            nodes.append(helper.make_node("Relu", [output], [name + "_out"], name=name + "_act"))
            output = name + "_out"
        elif activation in ("relu6", "clip"):
            low, high = (0.0, 6.0) if activation == "relu6" else (0.5, 1.0)
            arrays[f"{name}_low"], arrays[f"{name}_high"] = np.float32(low), np.float32(high)
            nodes.append(helper.make_node("Clip", [output, f"{name}_low", f"{name}_high"], [name + "_out"],
                                          name=name + "_act"))
            output = name + "_out"
        outputs.append(output)

    conv("pointwise", 5, (1, 1))
    conv("padded", 3, (3, 3), "relu", pads=[1, 2, 0, 1], strides=[2, 1])
    conv("dilated", 1, (2, 5), pads=[0, 2, 1, 0], dilations=[2, 1])
    conv("clipped", 7, (3, 2), "relu6", pads=[2, 0, 1, 1], strides=[1, 3])
    conv("wide", 11, (1, 4), pads=[0, 1, 0, 2])
    conv("bounded", 4, (1, 1), "clip")
    return make_model(nodes, [("x", [1, 6, 7, 9])], [(name, None) for name in outputs],
                      [initializer(name, array) for name, array in arrays.items()])


def depthwise_model():
    """Depthwise convolutions on [1, 8, 6, 7]: every kernel shape up to 3 rows of 4, strides,
    asymmetric padding, with and without ReLU."""
    arrays = {}
    nodes = []
    outputs = []
    for name, kernel, attrs, relu in [
            ("same", (3, 3), {"pads": [1, 1, 1, 1]}, True),
            ("strided", (3, 3), {"pads": [0, 1, 1, 0], "strides": [2, 2]}, False),
            ("row", (1, 3), {"pads": [0, 1, 0, 1]}, True),
            ("column", (3, 1), {"pads": [2, 0, 0, 0], "strides": [1, 2]}, False),
            ("small", (2, 2), {}, True),
            ("wide", (3, 4), {"pads": [1, 2, 1, 1]}, False)]:
        arrays[f"{name}_w"], arrays[f"{name}_b"] = weights(8, 1, *kernel), weights(8)
        output = f"{name}_conv" if relu else name
        nodes.append(helper.make_node("Conv", ["x", f"{name}_w", f"{name}_b"], [output], name=name, group=8, **attrs))
        if relu:
            nodes.append(helper.make_node("Relu", [output], [name], name=f"{name}_act"))
        outputs.append(name)
    return make_model(nodes, [("x", [1, 8, 6, 7])], [(name, None) for name in outputs],
                      [initializer(name, array) for name, array in arrays.items()])


def dense_model():
    """Fully connected layers whose depth is not a multiple of 5 (1 to 1601 inputs), with 1 to
    17 outputs and one that covers 3 rows. The two largest have over 1,215 B of weights."""
    arrays = {}
    nodes = []
    inputs = []
    outputs = []
    for depth, out_features in [(1, 3), (7, 2), (23, 17), (40, 9), (131, 5), (131, 1), (403, 17), (1601, 4)]:
        name = f"fc{depth}_{out_features}"
        source = f"x{depth}"
        if (source, [1, depth]) not in inputs:
            inputs.append((source, [1, depth]))
        arrays[f"{name}_w"], arrays[f"{name}_b"] = weights(depth, out_features), weights(out_features)
        nodes.append(helper.make_node("Gemm", [source, f"{name}_w", f"{name}_b"], [name], name=name))
        outputs.append(name)
    arrays["rows_w"] = weights(12, 6)
    inputs.append(("rows", [1, 3, 12]))
    nodes.append(helper.make_node("MatMul", ["rows", "rows_w"], ["rows_out"], name="rows"))
    outputs.append("rows_out")
    return make_model(nodes, inputs, [(name, None) for name in outputs],
                      [initializer(name, array) for name, array in arrays.items()])


def chain_model():
    """1x1 -> depthwise 3x3 -> 1x1 -> global average: the convolutions can all run in place."""
    arrays = {"a_w": weights(8, 8, 1, 1), "a_b": weights(8), "d_w": weights(8, 1, 3, 3), "d_b": weights(8),
              "c_w": weights(8, 8, 1, 1), "c_b": weights(8)}
    nodes = [
        helper.make_node("Conv", ["x", "a_w", "a_b"], ["a"], name="a"),
        helper.make_node("Relu", ["a"], ["a_relu"], name="a_act"),
        helper.make_node("Conv", ["a_relu", "d_w", "d_b"], ["d"], name="d", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "c_w", "c_b"], ["c"], name="c"),
        helper.make_node("GlobalAveragePool", ["c"], ["y"], name="pool"),
    ]
    return make_model(nodes, [("x", [1, 8, 16, 16])], [("y", None)],
                      [initializer(name, array) for name, array in arrays.items()])


# -- bit-exactness on the host --------------------------------------------------------


@pytest.mark.parametrize("target", ["cortex-m4", "host"])
@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
def test_conv_sad_matches_reference(target, granularity, tmp_path):
    compiled = compile_for(conv_model(), tmp_path, target, QuantOptions(granularity=granularity),
                           extra_scratch=ROOMY)
    chosen = kernels_by_node(compiled)
    for name in ("pointwise", "padded", "dilated", "clipped", "wide", "bounded"):
        assert chosen[name] == "conv2d_sad", name
    assert_host_exact(compiled, tmp_path)


@pytest.mark.parametrize("target", ["cortex-m4", "host"])
def test_depthwise_sad_matches_reference(target, tmp_path):
    compiled = compile_for(depthwise_model(), tmp_path, target, QuantOptions(granularity="per-channel"),
                           extra_scratch=ROOMY)
    assert set(kernels_by_node(compiled).values()) == {"depthwise_sad"}
    assert_host_exact(compiled, tmp_path)


@pytest.mark.parametrize("target", ["cortex-m4", "host"])
@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
def test_dense_lut_matches_reference(target, granularity, tmp_path):
    compiled = compile_for(dense_model(), tmp_path, target, QuantOptions(granularity=granularity),
                           extra_scratch=ROOMY)
    chosen = kernels_by_node(compiled)
    assert chosen["fc131_1"] == "dense"
    assert [name for name, kernel in chosen.items() if kernel == "dense_lut"] == [
        "fc1_3", "fc7_2", "fc23_17", "fc40_9", "fc131_5", "fc403_17", "fc1601_4", "rows"]
    assert_host_exact(compiled, tmp_path)


@pytest.mark.parametrize("target", ["cortex-m4", "esp32c3"])
def test_dense_rows_without_room_for_tables(target, tmp_path):
    compiled = compile_for(dense_model(), tmp_path, target, QuantOptions(granularity="per-channel"))
    chosen = kernels_by_node(compiled)
    assert [name for name, kernel in chosen.items() if kernel == "dense_rows"] == ["fc403_17", "fc1601_4"]
    # Smaller layers may still get tables where the plain plan leaves bytes free.
    assert compiled.plan.lower_bound <= compiled.plan.plain_lower_bound
    reasons = {node.name: choice.reason for node, choice in zip(compiled.graph.nodes, compiled.kernels)}
    assert "--extra-scratch" in reasons["fc403_17"]
    assert "smaller than the 1,215-byte trit table" in reasons["fc23_17"]
    assert_host_exact(compiled, tmp_path)


def test_conv_without_room_keeps_reference(tmp_path):
    arrays = {"only_w": weights(4, 4, 3, 3), "only_b": weights(4)}
    nodes = [helper.make_node("Conv", ["x", "only_w", "only_b"], ["y"], name="only", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", None)],
                       [initializer(name, array) for name, array in arrays.items()])
    compiled = compile_for(model, tmp_path, "cortex-m4")
    assert compiled.kernels[0].kernel == "conv2d"
    assert "0 B are free at this layer" in compiled.kernels[0].reason
    assert compiled.plan.lower_bound == compiled.plan.plain_lower_bound
    roomy = compile_for(model, tmp_path, "cortex-m4", extra_scratch=ROOMY)
    assert roomy.kernels[0].kernel == "conv2d_sad"
    assert_host_exact(compiled, tmp_path)


def test_group_scales_keep_reference(tmp_path):
    compiled = compile_for(conv_model(), tmp_path, "cortex-m4", QuantOptions(granularity="group", group_size=5),
                           extra_scratch=ROOMY)
    reasons = {node.name: choice.reason for node, choice in zip(compiled.graph.nodes, compiled.kernels)}
    assert kernels_by_node(compiled)["padded"] == "conv2d"
    assert "scale groups per output row" in reasons["padded"]


def exact_ties(graph) -> None:
    """Make every second sum of the first layer land exactly halfway between two outputs.

    multiplier 2^30 and shift 31 scale the sum by 1/2; biases that are multiples of 2^31
    keep the halves, so odd sums of both signs are ties, which round away from zero.
    """
    node = graph.nodes[0]
    quant = node.quant
    rows = quant["values"].shape[0]
    quant["multiplier_matrix"] = np.full((rows, 1), 1 << 30, dtype=np.int64)
    quant["multipliers"] = np.full(1, 1 << 30, dtype=np.int32)
    quant["shift"] = 31
    quant["bias_fixed"] = (np.arange(rows, dtype=np.int64) - rows // 2) * 7 * (1 << 31)
    quant["act_min"], quant["act_max"] = -128, 127


def ties_model():
    arrays = {"t_w": weights(6, 4, 1, 1), "t_b": np.zeros(6, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "t_w", "t_b"], ["y"], name="ties")]
    return make_model(nodes, [("x", [1, 4, 3, 5])], [("y", None)],
                      [initializer(name, array) for name, array in arrays.items()])


def test_negative_ties_round_away(tmp_path):
    compiled = compile_for(ties_model(), tmp_path, "cortex-m4", QuantOptions(granularity="per-tensor"), exact_ties,
                           extra_scratch=ROOMY)
    choice = compiled.kernels[0]
    assert choice.kernel == "conv2d_sad"
    assert choice.data["check_ties"] == 1
    inputs = int8_samples(compiled.graph)
    # The chosen parameters must produce ties of both signs, or the test checks nothing.
    node = compiled.graph.nodes[0]
    x = inputs[0][0].astype(np.int64).reshape(-1, 4) - node.quant["input_zero_point"]
    total = node.quant["bias_fixed"][None, :] + (x @ node.quant["values"].reshape(6, 4).T.astype(np.int64)) * (1 << 30)
    ties = total % (1 << 31) == 1 << 30
    assert (ties & (total < 0)).any()
    assert (ties & (total > 0)).any()
    assert_host_exact(compiled, tmp_path)


def test_chain_runs_in_place(tmp_path):
    compiled = compile_for(chain_model(), tmp_path, "cortex-m4", QuantOptions(granularity="per-channel"))
    plan, graph = compiled.plan, compiled.graph
    assert kernels_by_node(compiled) == {"a": "conv2d_sad", "d": "depthwise_sad", "c": "conv2d_sad",
                                         "pool": "pool_global"}
    assert plan.in_place == [0, 1, 2]
    source = graph.inputs[0]
    assert plan.offsets[source] == plan.offsets[graph.nodes[0].outputs[0]] == plan.offsets[graph.nodes[2].outputs[0]]
    assert plan.arena_size < plan.plain_lower_bound
    assert plan.scratch_size == max(choice.scratch for choice in compiled.kernels)
    assert_host_exact(compiled, tmp_path)


def test_no_in_place_when_input_read_later(tmp_path):
    arrays = {"a_w": weights(4, 4, 1, 1), "a_b": weights(4)}
    nodes = [helper.make_node("Conv", ["x", "a_w", "a_b"], ["a"], name="a"),
             helper.make_node("Add", ["a", "x"], ["y"], name="sum")]
    model = make_model(nodes, [("x", [1, 4, 3, 3])], [("y", None)],
                       [initializer(name, array) for name, array in arrays.items()])
    compiled = compile_for(model, tmp_path, "cortex-m4", extra_scratch=ROOMY)
    assert compiled.kernels[0].in_place
    assert compiled.plan.in_place == []
    assert compiled.plan.offsets[compiled.graph.inputs[0]] != compiled.plan.offsets[compiled.graph.nodes[0].outputs[0]]
    assert_host_exact(compiled, tmp_path)


# -- layouts and scratch ----------------------------------------------------------


def test_lut_layout_round_trip():
    trits = RNG.integers(-1, 2, size=(13, 47)).astype(np.int8)
    packed, groups = lut_layout(trits)
    assert groups == 10
    assert packed.size == 13 * 10
    # Bytes run [pass][row][group of the pass]; a pass covers LUT_PASS_GROUPS groups.
    rows = np.zeros((13, groups), dtype=np.uint8)
    position = 0
    for start in range(0, groups, LUT_PASS_GROUPS):
        count = min(LUT_PASS_GROUPS, groups - start)
        rows[:, start:start + count] = packed[position:position + 13 * count].reshape(13, count)
        position += 13 * count
    for row in range(13):
        decoded = unpack_trits(rows[row], groups * 5)
        assert np.array_equal(decoded[:47], trits[row])
        assert not decoded[47:].any()


def test_scratch_sizes_match_c(tmp_path):
    chain = compile_for(chain_model(), tmp_path, "cortex-m4", QuantOptions(granularity="per-channel"), name="chain")
    dense = compile_for(dense_model(), tmp_path, "host", name="dense", extra_scratch=ROOMY)
    folder = tmp_path / "sizes"
    folder.mkdir()
    for files in (chain.files, dense.files):
        for name, text in files.items():
            (folder / name).write_text(text)
    attrs = chain.graph.nodes[1].attrs
    rows, stride = depthwise_plane(attrs)
    cases = {
        "chain_conv2d_sad_scratch_size(68, 15)": sad_scratch(65, 15),
        "chain_conv2d_sad_scratch_size(8, 30)": sad_scratch(8, 30),
        f"chain_depthwise_sad_scratch_size({rows}, {stride}, 3, 3)": depthwise_scratch(attrs, 3),
        "dense_dense_lut_scratch_size(131, 5)": lut_scratch("portable", 131, 5),
        "dense_dense_lut_scratch_size(7, 2)": lut_scratch("portable", 7, 2),
    }
    assert sad_patch_bytes(65) == 68
    main = folder / "sizes_main.c"
    main.write_text('#include <stdio.h>\n#include "chain_kernels.h"\n#include "dense_kernels.h"\n'
                    "int main(void)\n{\n"
                    + "".join(f'    printf("%ld\\n", (long){call});\n' for call in cases) + "    return 0;\n}\n")
    sources = [folder / name for name in ("chain_conv2d_sad.c", "chain_trit_masks.c", "chain_depthwise_sad.c",
                                          "dense_dense_lut.c")]
    subprocess.run(HOST_CC + STRICT_FLAGS + ["-O1", "-I", str(folder), str(main), *map(str, sources),
                                             "-o", str(folder / "sizes")], check=True, capture_output=True)
    printed = subprocess.run([str(folder / "sizes")], check=True, capture_output=True, text=True).stdout.split()
    assert [int(value) for value in printed] == list(cases.values())


def test_dsp_lut_scratch_is_pair_tables():
    assert lut_scratch("dsp", 1024, 256) == 4 * 243 * 4 + 4 * 256
    assert lut_scratch("portable", 1024, 256) == 8 * 244 * 2 + 4 * 256
    assert lut_scratch("dsp", 7, 2) == 243 * 4 + 8


# -- shared models ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["cortex-m4", "esp32c3"])
def test_kws_fast_kernels_on_host(target, tmp_path):
    model, sample = SHARED / "kws_ref_model.onnx", SHARED / "kws_sample.npy"
    if not model.is_file():
        pytest.skip(f"{model} not found: the shared models folder sits beside the repository")
    compiled = compile_model(model, load_target(target), "kws", None, sample)
    chosen = [choice.kernel for choice in compiled.kernels if choice.kernel]
    assert chosen.count("conv2d_sad") == 5
    assert chosen.count("depthwise_sad") == 4
    assert compiled.plan.arena_size <= 9600
    assert_host_exact(compiled, tmp_path)


# -- on an emulated Cortex-M4: the inline assembly ---------------------------------------


def require_qemu(target: str) -> None:
    spec = load_target(target)
    missing = [tool for tool in (spec.cc, spec.qemu["system"]) if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed; install with: make toolchains"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("build", [conv_model, depthwise_model, dense_model, chain_model],
                         ids=["conv", "depthwise", "dense", "chain"])
def test_assembly_matches_reference_on_m4(build, tmp_path):
    from bonsai_mcu.onboard import run_on_qemu

    require_qemu("cortex-m4")
    compiled = compile_for(build(), tmp_path, "cortex-m4", QuantOptions(granularity="per-channel"),
                           extra_scratch=ROOMY)
    inputs = int8_samples(compiled.graph, count=2)
    result = run_on_qemu(compiled, inputs, tmp_path / "qemu")
    assert not compare_outputs(reference_outputs(compiled.graph, inputs), result.outputs)


def test_tie_assembly_on_m4(tmp_path):
    from bonsai_mcu.onboard import run_on_qemu

    require_qemu("cortex-m4")
    compiled = compile_for(ties_model(), tmp_path, "cortex-m4", QuantOptions(granularity="per-tensor"), exact_ties,
                           extra_scratch=ROOMY)
    inputs = int8_samples(compiled.graph, count=3)
    result = run_on_qemu(compiled, inputs, tmp_path / "qemu")
    assert not compare_outputs(reference_outputs(compiled.graph, inputs), result.outputs)
