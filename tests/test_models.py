"""The two MLPerf Tiny reference models, end to end for the Cortex-M4 target.

The models live outside the repository, in ../shared/models relative to the
repository root; the tests skip when that folder is absent. Without the CI
environment variable, the clang and arm-none-eabi-gcc checks skip when those
compilers are missing; with it they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bonsai_mcu.data import load_samples
from bonsai_mcu.pipeline import compile_model, weight_summary
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import (STRICT_FLAGS, build_simulator, compare_outputs, quantize_inputs, reference_outputs,
                               run_simulator)

MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "models"

# name: (model file, sample file, maximum arena bytes, maximum ternary weight bytes or None)
MODELS = {
    "kws": ("kws_ref_model.onnx", "kws_sample.npy", 16000, 5000),
    "ad": ("ad01_fp32.onnx", "ad01_samples.npy", 768, None),
}

# Symbols the model code must not need: heap, stdio and libm.
FORBIDDEN_SYMBOLS = {
    "malloc", "calloc", "realloc", "free", "printf", "fprintf", "sprintf", "snprintf", "vprintf", "puts",
    "putchar", "fputs", "fwrite", "exp", "expf", "log", "logf", "sqrt", "sqrtf", "pow", "powf", "floor",
    "floorf", "ceil", "ceilf", "round", "roundf", "lround", "lroundf", "tanh", "tanhf", "fabs", "fabsf",
}
# Everything a compiled model object may leave undefined: string.h copies and compiler helpers.
ALLOWED_UNDEFINED = re.compile(r"^(memcpy|memset|memmove|__aeabi_\w+|__\w+di3|__stack_chk_\w+)$")


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found; install it with: apt-get install {package}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module", params=sorted(MODELS))
def compiled(request, tmp_path_factory):
    model_file, sample_file, _, _ = MODELS[request.param]
    model, samples = MODELS_DIR / model_file, MODELS_DIR / sample_file
    if not model.is_file() or not samples.is_file():
        pytest.skip(f"reference model {model} or samples {samples} not found (the ../shared/models folder "
                    "beside the repository holds them)")
    result = compile_model(model, load_target("cortex-m4"), calibration=samples)
    src = tmp_path_factory.mktemp(f"{request.param}_src")
    for name, text in result.files.items():
        (src / name).write_text(text)
    return request.param, result, samples, src


def test_host_c_bit_exact(compiled, tmp_path):
    _, result, samples_path, _ = compiled
    graph = result.graph
    samples = load_samples(samples_path, graph)
    inputs = quantize_inputs(graph, samples)
    expected = reference_outputs(graph, inputs)

    executable = build_simulator(result.files, graph, tmp_path)
    actual = run_simulator(executable, graph, inputs)

    assert len(actual) == len(samples) == np.load(samples_path).shape[0]
    mismatches = compare_outputs(expected, actual)
    assert not mismatches, f"{len(mismatches)} outputs differ; first: {mismatches[0]}"


def test_weight_size(compiled):
    name, result, _, _ = compiled
    summary = weight_summary(result.graph)
    assert summary["ternary_weights"] == summary["all_weights"]
    assert summary["bits_per_weight"] <= 1.7
    stored = summary["ternary_packed"] + summary["ternary_scales"]
    assert stored * 8 / summary["ternary_weights"] == pytest.approx(summary["bits_per_weight"])
    limit = MODELS[name][3]
    if limit is not None:
        assert stored <= limit


def test_arena_size(compiled):
    name, result, _, _ = compiled
    assert result.plan.arena_size <= MODELS[name][2]
    assert result.plan.arena_size >= result.plan.lower_bound
    header = result.files[f"{result.name}.h"]
    assert f"#define {result.name.upper()}_ARENA_SIZE {result.plan.arena_size}u" in header


def compile_objects(compiler: list[str], src: Path, out: Path) -> list[Path]:
    """Compile every .c file of src into out; require no diagnostics at all."""
    out.mkdir(parents=True, exist_ok=True)
    objects = []
    for source in sorted(src.glob("*.c")):
        target = out / (source.stem + ".o")
        result = subprocess.run(compiler + ["-I", str(src), "-c", str(source), "-o", str(target)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(compiler)} failed on {source.name}:\n{result.stderr}"
        assert result.stderr.strip() == "", f"{' '.join(compiler)} warned on {source.name}:\n{result.stderr}"
        objects.append(target)
    return objects


def undefined_symbols(nm: str, objects: list[Path]) -> set[str]:
    """Return the symbols the objects need from outside: undefined in all of them."""
    result = subprocess.run([nm, *map(str, objects)], capture_output=True, text=True, check=True)
    defined, undefined = set(), set()
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] in ("U", "w"):
            undefined.add(fields[1])
        elif len(fields) == 3:
            defined.add(fields[2])
    return undefined - defined


def check_symbols(nm: str, objects: list[Path]) -> None:
    symbols = undefined_symbols(nm, objects)
    assert not symbols & FORBIDDEN_SYMBOLS
    assert {s for s in symbols if not ALLOWED_UNDEFINED.match(s)} == set()


def test_gcc_strict(compiled, tmp_path):
    _, _, _, src = compiled
    gcc = require_tool("gcc", "gcc")
    objects = compile_objects([gcc, *STRICT_FLAGS, "-O2"], src, tmp_path)
    check_symbols(require_tool("nm", "binutils"), objects)


def test_clang_strict(compiled, tmp_path):
    _, _, _, src = compiled
    clang = require_tool("clang", "clang")
    objects = compile_objects([clang, *STRICT_FLAGS, "-O2"], src, tmp_path)
    check_symbols(require_tool("nm", "binutils"), objects)


def test_arm_none_eabi(compiled, tmp_path):
    _, _, _, src = compiled
    gcc = require_tool("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-Os", *STRICT_FLAGS]
    objects = compile_objects([gcc, *flags], src, tmp_path)
    check_symbols(require_tool("arm-none-eabi-nm", "binutils-arm-none-eabi"), objects)

    # Weights and arena land in the sections the cortex-m4 target names.
    target = load_target("cortex-m4")
    sections = subprocess.run([shutil.which("arm-none-eabi-objdump") or "arm-none-eabi-objdump", "-h",
                               *map(str, objects)], capture_output=True, text=True).stdout
    assert target.weights_section in sections
    assert target.arena_section in sections
