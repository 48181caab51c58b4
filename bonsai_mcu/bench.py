"""`bonsai-mcu bench`: instructions per layer and per inference on emulated cores, flash and RAM.

Every figure is an instruction count measured under QEMU with -icount shift=0 (the method of
bonsai_mcu.emulate): SysTick at its board clock on Cortex-M, minstret on RISC-V. Each case
is built twice per target. The plain firmware gives instructions per inference as the test
harness measures NAME_run. The second firmware defines NAME_LAYER_HOOK (templates/model.c.j2)
to read the counter before every layer. The difference of two readings, minus the measured
cost of a reading, is the layer's count. Each case runs `repeats` times and figures are means.

Cases: single layers with the shapes of the CMSIS-NN figures (a 1024 x 256 fully connected
layer with and without room for its tables, a 64 -> 64 pointwise and a 3x3 depthwise
convolution on 25 x 5 pixels, random ternary weights), each also built on the portable
reference kernels; and whole models
(keyword spotting and anomaly detection from the shared models folder when present, the
bundled digits classifier). Code is built with -O3, as the CMSIS-NN figures were.
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import BonsaiError, __version__
from .data import load_samples
from .emulate import build_firmware, instructions_per_count, require_toolchain, run_firmware
from .ir import node_macs
from .kernels import KernelChoice
from .pipeline import Compiled, compile_model, weight_summary, write_file
from .onboard import write_sources
from .plan import plan_graph
from .codegen import render
from .size import measure_size
from .targets import Target, load_target
from .verify import quantize_inputs, reference_outputs

log = logging.getLogger(__name__)

TARGETS = ("cortex-m4", "cortex-m7", "cortex-m55", "esp32c3")
OPTIMIZATION = "-O3"
REPEATS = 10
SEED = 20240601

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
SHARED_MODELS = ROOT.parent / "shared" / "models"

# CMSIS-NN (int8 weights and activations, current main branch) and TFLM figures, measured by
# the project's maintainers with the method above: same QEMU machines, -O3, SysTick or
# minstret, deterministic random int8 data. Instructions per MAC by case and target.
CMSIS_PER_MAC = {
    ("fc_1024x256", "cortex-m4"): 1.92, ("fc_1024x256", "cortex-m7"): 1.92,
    ("fc_1024x256", "cortex-m3"): 3.38, ("fc_1024x256", "esp32c3"): 5.38,
    ("pointwise_64", "cortex-m4"): 2.05, ("depthwise_3x3", "cortex-m4"): 8.10,
}
# The keyword-spotting layers called one by one through CMSIS-NN on a Cortex-M4, one inference.
CMSIS_KWS_M4 = {
    "10x4 convolution, stride 2": 1_107_200, "four depthwise 3x3": 2_331_272, "four pointwise 1x1": 4_188_144,
    "average pool": 51_000, "dense 64->12": 2_176, "softmax": 5_496,
}
CMSIS_KWS_M4_TOTAL = 7_685_288
# TFLM, reference kernels, recording allocator: activation plan ("head") of the int8 models.
TFLM_ARENA = {"kws": 16_000, "ad01": 768}

# The fully connected case is also built with this much room for dense_lut's tables (4,912 B on
# Cortex-M, 4,928 B in portable C): a 1024 x 256 layer alone has no activation bytes to spare.
FC_EXTRA_SCRATCH = 8192

# Goals of this work, checked against the measurements in BENCHMARKS.md.
GOALS = [
    ("fully connected 1024 in, 256 out, Cortex-M4, instructions/MAC", "fc_1024x256", "cortex-m4", 0.96),
    ("fully connected 1024 in, 256 out, RV32IMC, instructions/MAC", "fc_1024x256", "esp32c3", 2.0),
    ("pointwise 1x1, 64 to 64 channels, 25x5, Cortex-M4, instructions/MAC", "pointwise_64", "cortex-m4", 1.0),
    ("depthwise 3x3, 64 channels, 25x5, Cortex-M4, instructions/MAC", "depthwise_3x3", "cortex-m4", 2.0),
]
KWS_GOAL_INSTRUCTIONS = 3_600_000
KWS_GOAL_ARENA = 9_600


# -- cases --------------------------------------------------------------------------


@dataclass
class Case:
    """One model to measure. kind is "layer" (a single layer with CMSIS-NN figures) or "model".

    extra_scratch is passed to compile_model: bytes the kernels may add to the arena.
    """

    name: str
    title: str
    kind: str
    model: Path
    calibration: list
    samples: list
    extra_scratch: int = 0
    anchor: str = ""


@dataclass
class Measurement:
    """Figures of one case on one target; instruction counts are means over the repeats."""

    target: str
    total: float
    layers: list[float]
    reference_layers: list[float] = field(default_factory=list)
    flash: dict = field(default_factory=dict)
    ram: dict = field(default_factory=dict)
    compiled: Compiled | None = None
    # Instructions per inference built with the target's own flags (no -O3), models only.
    total_default_flags: float = 0.0


def _ternary(rng: np.random.Generator, shape, scale_axis_size: int) -> np.ndarray:
    """Random trits times a per-output-channel scale: the importer keeps them exactly ternary."""
    trits = rng.choice([-1.0, 0.0, 1.0], size=shape, p=[0.3, 0.4, 0.3])
    scales = rng.uniform(0.02, 0.08, size=scale_axis_size).reshape((-1,) + (1,) * (len(shape) - 1))
    return (trits * scales).astype(np.float32)


def _save(nodes, inputs, outputs, initializers, folder: Path, name: str) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def layer_cases(folder: Path) -> list[Case]:
    """Write the single-layer models into `folder` and return their cases."""
    rng = np.random.default_rng(SEED)
    tensor = helper.make_tensor_value_info
    cases = []

    weights = _ternary(rng, (256, 1024), 256)
    path = _save([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                 [tensor("x", TensorProto.FLOAT, [1, 1024])], [tensor("y", TensorProto.FLOAT, [1, 256])],
                 [numpy_helper.from_array(weights, "w"),
                  numpy_helper.from_array(rng.normal(0, 0.1, 256).astype(np.float32), "b")], folder, "fc_1024x256")
    samples = _samples(rng, (1, 1024))
    cases.append(Case("fc_1024x256", f"fully connected, 1024 in, 256 out, --extra-scratch {FC_EXTRA_SCRATCH}",
                      "layer", path, samples, [], FC_EXTRA_SCRATCH))
    cases.append(Case("fc_1024x256_rows", "fully connected, 1024 in, 256 out, no scratch", "layer", path, samples, [],
                      0, "fc_1024x256"))

    for name, title, shape, group, pads in (
            ("pointwise_64", "pointwise 1x1, 64 to 64 channels, 25x5 pixels", (64, 64, 1, 1), 1, [0, 0, 0, 0]),
            ("depthwise_3x3", "depthwise 3x3, 64 channels, 25x5 pixels, padding 1", (64, 1, 3, 3), 64,
             [1, 1, 1, 1])):
        weights = _ternary(rng, shape, 64)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=group, pads=pads,
                                  kernel_shape=list(shape[2:])),
                 helper.make_node("Relu", ["c"], ["y"])]
        path = _save(nodes, [tensor("x", TensorProto.FLOAT, [1, 64, 25, 5])],
                     [tensor("y", TensorProto.FLOAT, [1, 64, 25, 5])],
                     [numpy_helper.from_array(weights, "w"),
                      numpy_helper.from_array(rng.normal(0, 0.1, 64).astype(np.float32), "b")], folder, name)
        cases.append(Case(name, title, "layer", path, _samples(rng, (1, 64, 25, 5)), []))
    for case in cases:
        case.samples = case.calibration[:1]
    return cases


def _samples(rng: np.random.Generator, shape) -> list[list[np.ndarray]]:
    return [[rng.standard_normal(shape).astype(np.float32)] for _ in range(8)]


def model_cases(models: Path) -> list[Case]:
    """Return the whole-model cases whose files exist."""
    cases = []
    kws, kws_sample = models / "kws_ref_model.onnx", models / "kws_sample.npy"
    if kws.is_file() and kws_sample.is_file():
        cases.append(Case("kws", "keyword spotting (DS-CNN, MLPerf Tiny)", "model", kws, [kws_sample], [kws_sample]))
    else:
        log.warning("%s not found: the keyword-spotting model is left out", kws)
    ad01, ad01_samples = models / "ad01_fp32.onnx", models / "ad01_samples.npy"
    if ad01.is_file() and ad01_samples.is_file():
        cases.append(Case("ad01", "anomaly detection (FC autoencoder, MLPerf Tiny)", "model", ad01, [ad01_samples],
                          [ad01_samples]))
    else:
        log.warning("%s not found: the anomaly-detection model is left out", ad01)
    cases.append(Case("digits", "digits classifier (bundled example)", "model", DIGITS / "digits.onnx",
                      [DIGITS / "digits_calibration.npy"], [DIGITS / "digits_test.npy"]))
    return cases


def compile_case(case: Case, target: Target) -> tuple[Compiled, list[list[np.ndarray]]]:
    """Compile a case for a target; return it and the physical int8 inputs of one run."""
    if case.kind == "layer":
        with tempfile.TemporaryDirectory(prefix="bonsai-bench-") as folder:
            calibration = Path(folder) / "calibration.npy"
            np.save(calibration, np.concatenate([sample[0] for sample in case.calibration]))
            compiled = compile_model(case.model, target, case.name, None, calibration, case.extra_scratch)
        samples = case.samples
    else:
        compiled = compile_model(case.model, target, case.name, None, case.calibration[0])
        samples = load_samples(case.samples[0], compiled.graph)[:1]
    return compiled, quantize_inputs(compiled.graph, samples)


def with_reference_kernels(compiled: Compiled) -> Compiled:
    """Return the same model rendered on the portable reference kernels."""
    reference = [KernelChoice("", "portable", "") for _ in compiled.graph.nodes]
    plan = plan_graph(compiled.graph, max(compiled.target.alignment, 4))
    files = render(compiled.graph, plan, compiled.target, compiled.name)
    return Compiled(compiled.graph, plan, files, compiled.target, compiled.name, reference)


# -- firmware -------------------------------------------------------------------------


HOOK_HEADER = """/* Declarations for the layer hook of bonsai-mcu bench. */
#include <stdint.h>
void bench_layer_hook(int index);
"""

HOOK_SOURCE = """/* Layer timing for bonsai-mcu bench: runs {prefix}_run once and returns the counter
 * reading taken before each layer (and after the last) as extra output bytes. */
#include <stdint.h>
#include <string.h>

#include "bench.h"
#include "{prefix}.h"

uint64_t harness_counter_read(void);

static uint64_t stamps[{count}];

void bench_layer_hook(int index)
{{
    stamps[index] = harness_counter_read();
}}

int bench_run({signature}, int8_t *stamp_bytes)
{{
    int status;
    uint64_t first, second;

    /* Two readings in a row: the cost of one reading, subtracted from every layer. */
    bench_layer_hook(0);
    first = stamps[0];
    bench_layer_hook(0);
    second = stamps[0];
    status = {prefix}_run({arguments});
    stamps[{count} - 1] = second - first;
    memcpy(stamp_bytes, stamps, sizeof stamps);
    return status;
}}
"""


def _signature(compiled: Compiled) -> tuple[str, str]:
    graph = compiled.graph
    params = [f"const int8_t *input_{i}" for i in range(len(graph.inputs))]
    params += [f"int8_t *output_{i}" for i in range(len(graph.outputs))]
    arguments = [f"input_{i}" for i in range(len(graph.inputs))] + [f"output_{i}" for i in range(len(graph.outputs))]
    return ", ".join(params), ", ".join(arguments)


def run_plain(compiled: Compiled, inputs, repeats: int, workdir: Path,
              flags: tuple[str, ...] = (OPTIMIZATION,)) -> tuple[float, dict, list]:
    """Build and run the model as the test harness does, with the target's flags and `flags`;
    return (mean instructions per inference, footprint of the model objects, outputs of the
    first run)."""
    target = compiled.target
    sources = write_sources(compiled, workdir / "src")
    sizes = [compiled.graph.tensors[name].size for name in compiled.graph.outputs]
    elf = build_firmware(target, sources, [workdir / "src"], compiled.name, inputs * repeats, sizes,
                         workdir / "plain", list(flags))
    result = run_firmware(target, elf, repeats * len(inputs), sizes, timeout_s=300.0)
    objects = sorted((workdir / "plain" / "obj").glob("[0-9]*.o"))
    footprint = measure_size(target, objects)
    return float(np.mean(result.instructions)), footprint, result.outputs[0]


def run_layers(compiled: Compiled, inputs, repeats: int, workdir: Path) -> list[float]:
    """Build the model with the layer hook and return the mean instructions of every layer."""
    target = compiled.target
    graph = compiled.graph
    sources = write_sources(compiled, workdir / "src")
    count = len(graph.nodes) + 2
    signature, arguments = _signature(compiled)
    (workdir / "src" / "bench.h").write_text(
        HOOK_HEADER + f"int bench_run({signature}, int8_t *stamp_bytes);\n")
    hook = workdir / "src" / "bench_hook.c"
    hook.write_text(HOOK_SOURCE.format(prefix=compiled.name, count=count, signature=signature, arguments=arguments))
    sizes = [graph.tensors[name].size for name in graph.outputs] + [8 * count]
    flags = [OPTIMIZATION, f"-D{compiled.name.upper()}_LAYER_HOOK(index)=bench_layer_hook(index)",
             "-include", str(workdir / "src" / "bench.h")]
    elf = build_firmware(target, sources + [hook], [workdir / "src"], "bench", inputs * repeats, sizes,
                         workdir / "hooked", flags)
    result = run_firmware(target, elf, repeats * len(inputs), sizes, timeout_s=300.0)
    scale = instructions_per_count(target)
    runs = []
    for outputs in result.outputs:
        stamps = outputs[-1].view(np.uint64).astype(np.float64)
        reading = stamps[-1]
        deltas = np.diff(stamps[:len(graph.nodes) + 1]) - reading
        runs.append(np.maximum(deltas, 0.0) * scale)
    return list(np.mean(runs, axis=0))


def measure(case: Case, target: Target, repeats: int, workdir: Path, reference: bool) -> Measurement:
    compiled, inputs = compile_case(case, target)
    expected = reference_outputs(compiled.graph, inputs)[0]
    total, footprint, outputs = run_plain(compiled, inputs, repeats, workdir / "fast")
    for index, (want, got) in enumerate(zip(expected, outputs)):
        if not np.array_equal(want, got):
            raise BonsaiError(f"bench: {case.name} on {target.name} differs from the reference in output {index}")
    layers = run_layers(compiled, inputs, repeats, workdir / "fast")
    reference_layers = []
    if reference:
        reference_layers = run_layers(with_reference_kernels(compiled), inputs, repeats, workdir / "reference")
    default_flags = 0.0
    if case.kind == "model":
        default_flags = run_plain(compiled, inputs, repeats, workdir / "default", ())[0]
    return Measurement(target.name, total, layers, reference_layers, footprint["flash"], footprint["ram"], compiled,
                       default_flags)


# -- report ---------------------------------------------------------------------------


def _macs(compiled: Compiled) -> list[int]:
    return [node_macs(node, compiled.graph) for node in compiled.graph.nodes]


def _per_mac(instructions: float, macs: int) -> str:
    return f"{instructions / macs:.3f}" if macs else ""


def _count(value: float) -> str:
    return f"{value:,.0f}"


def layer_table(cases: list[Case], results: dict) -> list[str]:
    lines = ["| layer | target | kernel | scratch (B) | instructions per call | per MAC | reference kernel per MAC | "
             "CMSIS-NN per MAC |", "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        for target, m in results[case.name].items():
            macs = _macs(m.compiled)
            index = int(np.argmax(macs))
            choice = m.compiled.kernels[index]
            kernel = f"{choice.kernel} ({choice.variant})" if choice.is_fast else choice.kernel
            anchor = CMSIS_PER_MAC.get((case.anchor or case.name, target))
            reference = _per_mac(m.reference_layers[index], macs[index]) if m.reference_layers else ""
            lines.append(f"| {case.title} | {target} | {kernel} | {choice.scratch:,} | {_count(m.layers[index])} | "
                         f"{_per_mac(m.layers[index], macs[index])} | {reference} | "
                         f"{anchor if anchor is not None else ''} |")
    return lines


def kws_groups(m: Measurement) -> dict[str, float]:
    """Sum the keyword-spotting layers into the groups of the CMSIS-NN figures."""
    groups = dict.fromkeys(CMSIS_KWS_M4, 0.0)
    for node, count in zip(m.compiled.graph.nodes, m.layers):
        a = node.attrs
        if node.op == "Conv" and a["group"] > 1:
            groups["four depthwise 3x3"] += count
        elif node.op == "Conv" and tuple(a["kernel"]) == (1, 1):
            groups["four pointwise 1x1"] += count
        elif node.op == "Conv":
            groups["10x4 convolution, stride 2"] += count
        elif node.op == "AveragePool":
            groups["average pool"] += count
        elif node.op == "Dense":
            groups["dense 64->12"] += count
        elif node.op == "Softmax":
            groups["softmax"] += count
    return groups


def model_tables(cases: list[Case], results: dict) -> list[str]:
    lines = ["| model | target | instructions per inference | MACs | per MAC | same, target's flags | "
             "RAM: arena (B) | TFLM activation plan (B) | flash (B) | weights section (B) | code (B) | "
             "other read-only (B) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        for target, m in results[case.name].items():
            macs = sum(_macs(m.compiled))
            tflm = f"{TFLM_ARENA[case.name]:,}" if case.name in TFLM_ARENA else ""
            flags = " ".join(flag for flag in load_target(target).cflags if flag.startswith("-O"))
            lines.append(f"| {case.name} | {target} | {_count(m.total)} | {macs:,} | {_per_mac(m.total, macs)} | "
                         f"{_count(m.total_default_flags)} ({flags}) | {m.ram['total']:,} | {tflm} | {m.flash['total']:,} | {m.flash['weights']:,} | "
                         f"{m.flash['code']:,} | {m.flash['rodata']:,} |")
    return lines


def kws_detail(results: dict) -> list[str]:
    if "kws" not in results or "cortex-m4" not in results["kws"]:
        return []
    m = results["kws"]["cortex-m4"]
    graph = m.compiled.graph
    lines = ["| # | op | kernel | MACs | instructions | per MAC |", "|---|---|---|---|---|---|"]
    for index, (node, choice, count) in enumerate(zip(graph.nodes, m.compiled.kernels, m.layers)):
        macs = node_macs(node, graph)
        kernel = f"{choice.kernel} ({choice.variant})" if choice.is_fast else (choice.kernel or "")
        lines.append(f"| {index} | {node.op} | {kernel} | {macs:,} | {_count(count)} | {_per_mac(count, macs)} |")
    targets = list(results["kws"])
    lines += ["", "Layer groups on every target, against CMSIS-NN on a Cortex-M4:", "",
              "| layers | " + " | ".join(targets) + " | CMSIS-NN, Cortex-M4 |",
              "|---|" + "---|" * (len(targets) + 1)]
    groups = {target: kws_groups(results["kws"][target]) for target in targets}
    for group in CMSIS_KWS_M4:
        counts = " | ".join(_count(groups[target][group]) for target in targets)
        lines.append(f"| {group} | {counts} | {CMSIS_KWS_M4[group]:,} |")
    totals = " | ".join(f"**{_count(results['kws'][target].total)}**" for target in targets)
    lines.append(f"| **whole inference** (harness count, with input and output copies) | {totals} | "
                 f"**{CMSIS_KWS_M4_TOTAL:,}** |")
    return lines


def goal_lines(results: dict) -> list[str]:
    lines = ["| goal | limit | measured | met |", "|---|---|---|---|"]
    for title, case, target, goal in GOALS:
        m = results.get(case, {}).get(target)
        if m is None:
            continue
        macs = _macs(m.compiled)
        index = int(np.argmax(macs))
        value = m.layers[index] / macs[index]
        lines.append(f"| {title} | at most {goal} | {value:.3f} | {'yes' if value <= goal else 'no'} |")
    kws = results.get("kws", {}).get("cortex-m4")
    if kws is not None:
        lines.append(f"| keyword spotting, one inference, Cortex-M4, instructions | at most "
                     f"{KWS_GOAL_INSTRUCTIONS:,} | {_count(kws.total)} | "
                     f"{'yes' if kws.total <= KWS_GOAL_INSTRUCTIONS else 'no'} |")
        arena = kws.compiled.plan.arena_size
        lines.append(f"| keyword spotting arena, bytes | at most {KWS_GOAL_ARENA:,} | {arena:,} | "
                     f"{'yes' if arena <= KWS_GOAL_ARENA else 'no'} |")
    return lines


def storage_lines(cases: list[Case], results: dict) -> list[str]:
    """Weight storage of every case as the chosen kernels read it (first measured target)."""
    lines = ["| case | ternary weights | stored bytes | bits per weight | with 32-bit scales |", "|---|---|---|---|---|"]
    for case in cases:
        m = next(iter(results[case.name].values()))
        summary = weight_summary(m.compiled.graph, m.compiled.kernels)
        count = summary["ternary_weights"]
        if not count:
            continue
        lines.append(f"| {case.name} | {count:,} | {summary['ternary_packed']:,} | "
                     f"{8 * summary['ternary_packed'] / count:.3f} | {summary['bits_per_weight']:.3f} |")
    return lines


def render_markdown(cases: list[Case], results: dict, command: str, seconds: float) -> str:
    layer = [case for case in cases if case.kind == "layer"]
    models = [case for case in cases if case.kind == "model"]
    parts = [
        "# Benchmarks",
        "",
        f"Generated by bonsai-mcu {__version__} with `{command}` in {seconds:.0f} s. Do not edit by hand:",
        "run the command again.",
        "",
        "Every figure is a count of executed instructions under QEMU with `-icount shift=0`, the mean of "
        f"{results.get('_repeats', REPEATS)} runs: SysTick (40 instructions per tick on the 25 MHz boards) on "
        "Cortex-M, `minstret` on RISC-V. Code is built with the target's flags and `-O3`. Layer figures come from "
        "a counter reading before each layer, minus the cost of one reading; whole-model figures are the "
        "harness's count of one `NAME_run` call, input and output copies included. Instructions are not "
        "cycles: a load takes 2 cycles on a Cortex-M4 and the Cortex-M7 issues two instructions per cycle.",
        "",
        "The CMSIS-NN columns hold int8 figures (CMSIS-NN main branch, int8 weights and activations) "
        "measured the same way on the same QEMU machines; the TFLM column holds the activation plan of "
        "TensorFlow Lite Micro's recording allocator for the int8 model.",
        "",
        "## Goals",
        "",
        *goal_lines(results),
        "",
        "## Single layers",
        "",
        "Random ternary weights (30 % -1, 40 % 0, 30 % +1) with per-channel scales; the convolutions end "
        "in ReLU. The reference kernel is the portable definition (templates/kernels/conv2d.c.j2, dense.c.j2).",
        "",
        *layer_table(layer, results),
        "",
        "## Whole models",
        "",
        "RAM is the arena: activations, in-place layers and kernel scratch (the model code has no other "
        "static data). Flash is the model's compiled objects before linking (memcpy and compiler helpers "
        "excluded): the weights section holds packed trits, 64-bit biases and requantization parameters; "
        "other read-only data is the 3,888-byte mask table of the SAD kernels and the 1,215-byte trit table of "
        "dense_rows where used.",
        "",
        *model_tables(models, results),
        "",
    ]
    detail = kws_detail(results)
    if detail:
        parts += ["## Keyword spotting on Cortex-M4, layer by layer", "", *detail, ""]
    parts += ["## Weight storage", "",
              "Packed trits are 5 per byte (1.6 bits). conv2d_sad, depthwise_sad and dense_rows read the packed "
              "stream of the reference kernels; dense_lut pads every row to a whole number of bytes.", "",
              *storage_lines(cases, results), ""]
    return "\n".join(parts)


# -- entry point ----------------------------------------------------------------------


def run_bench(targets: list[str], output: Path, repeats: int = REPEATS, models: Path = SHARED_MODELS,
              workdir: Path | None = None, command: str = "") -> str:
    """Measure every case on every target, write the Markdown page to `output` and return it."""
    started = time.monotonic()
    specs = [require_toolchain(load_target(name), emulator=True) for name in targets]
    with tempfile.TemporaryDirectory(prefix="bonsai-bench-") as scratch:
        folder = Path(workdir) if workdir else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        cases = layer_cases(folder) + model_cases(Path(models))
        results: dict = {"_repeats": repeats}
        for case in cases:
            results[case.name] = {}
            for target in specs:
                log.warning("bench: %s on %s", case.name, target.name)
                results[case.name][target.name] = measure(case, target, repeats, folder / case.name / target.name,
                                                          case.kind == "layer")
    text = render_markdown(cases, results, command or "bonsai-mcu bench", time.monotonic() - started)
    write_file(output, text, "-o")
    return text


def command_line() -> str:
    return "bonsai-mcu " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
