"""The generated C of real models, cross-compiled and run on emulated cores.

Each case generates C for one model and target, runs the samples on the
target's QEMU board and requires the same bytes as the host simulator (and so
the reference). The size report must match the cross toolchain's size tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bonsai_mcu.onboard import measure_footprint, run_on_qemu
from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import build_simulator, quantize_inputs, run_simulator
from bonsai_mcu.data import load_samples

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "models"
DIGITS = ROOT / "examples" / "digits"

APT = ("apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm "
       "gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc")

MODELS = {
    "kws": (SHARED / "kws_ref_model.onnx", SHARED / "kws_sample.npy", SHARED / "kws_sample.npy"),
    "ad01": (SHARED / "ad01_fp32.onnx", SHARED / "ad01_samples.npy", SHARED / "ad01_samples.npy"),
    "digits": (DIGITS / "digits.onnx", DIGITS / "digits_calibration.npy", DIGITS / "digits_test.npy"),
}
TARGETS = ["cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "esp32c3"]


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed; install with: {APT}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def model_paths(key: str):
    model, calibration, inputs = MODELS[key]
    if not model.is_file():
        pytest.skip(f"{model} not found: the shared models folder sits beside the repository")
    return model, calibration, inputs


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_qemu_matches_host(model_key, target_name, tmp_path):
    target = load_target(target_name)
    require_tools(target.cc, target.qemu["system"])
    model, calibration, inputs_path = model_paths(model_key)
    compiled = compile_model(model, target, model_key, calibration=calibration)
    samples = load_samples(inputs_path, compiled.graph)
    if model_key == "digits":
        samples = samples[:60]
    inputs = quantize_inputs(compiled.graph, samples)

    host = run_simulator(build_simulator(compiled.files, compiled.graph, tmp_path / "host"), compiled.graph, inputs)
    emulated = run_on_qemu(compiled, inputs, tmp_path / "qemu")

    assert len(emulated.outputs) == len(host)
    for sample, (want, got) in enumerate(zip(host, emulated.outputs)):
        for index, (expected, actual) in enumerate(zip(want, got)):
            assert np.array_equal(expected, actual), f"sample {sample}, output {index} differs on {target_name}"
    assert all(count > 0 for count in emulated.instructions)


def berkeley_sizes(size_tool: str, objects: list[Path]) -> tuple[int, int, int]:
    output = subprocess.run([size_tool, *map(str, objects)], capture_output=True, text=True, check=True).stdout
    text = data = bss = 0
    for line in output.splitlines()[1:]:
        fields = line.split()
        text, data, bss = text + int(fields[0]), data + int(fields[1]), bss + int(fields[2])
    return text, data, bss


def test_size_matches_size_tool(tmp_path):
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-size")
    model, calibration, _ = model_paths("kws")
    compiled = compile_model(model, load_target("cortex-m4"), "kws", calibration=calibration)

    footprint = measure_footprint(compiled, tmp_path)
    objects = sorted((tmp_path / "build").rglob("*.o"))
    text, data, bss = berkeley_sizes("arm-none-eabi-size", objects)

    flash, ram = footprint["flash"], footprint["ram"]
    assert flash["weights"] + flash["code"] + flash["rodata"] == text
    assert flash["data"] == data
    assert ram["arena"] + ram["bss"] == bss
    assert ram["arena"] == compiled.plan.arena_size
    assert flash["weights"] > 0
    assert flash["code"] > 0


def test_size_command_prints_bytes(tmp_path):
    require_tools("arm-none-eabi-gcc")
    from click.testing import CliRunner

    from bonsai_mcu.cli import main

    model, calibration, _ = model_paths("kws")
    result = CliRunner().invoke(main, ["size", str(model), "--target", "cortex-m4", "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    assert "weights" in result.output
    assert "code" in result.output
    arena = compile_model(model, load_target("cortex-m4"), "kws", calibration=calibration).plan.arena_size
    assert f"arena {arena:,}" in result.output


STRICT = ("-Wpedantic", "-Werror")


@pytest.mark.parametrize("target_name", ["esp32", "esp32s3", "cortex-m0plus"])
@pytest.mark.parametrize("model_key", ["kws", "ad01"])
def test_compiles_without_warning(model_key, target_name, tmp_path):
    target = load_target(target_name)
    require_tools(target.cc)
    model, calibration, _ = model_paths(model_key)
    compiled = compile_model(model, target, model_key, calibration=calibration)
    footprint = measure_footprint(compiled, tmp_path, STRICT)
    assert footprint["ram"]["arena"] == compiled.plan.arena_size


@pytest.mark.parametrize("model_key", ["ad01", "digits"])
def test_cortex_m0_runs_models_that_fit(model_key, tmp_path):
    target = load_target("cortex-m0plus")
    require_tools(target.cc, target.qemu["system"])
    model, calibration, inputs_path = model_paths(model_key)
    compiled = compile_model(model, target, model_key, calibration=calibration)
    inputs = quantize_inputs(compiled.graph, load_samples(inputs_path, compiled.graph)[:8])
    host = run_simulator(build_simulator(compiled.files, compiled.graph, tmp_path / "host"), compiled.graph, inputs)
    emulated = run_on_qemu(compiled, inputs, tmp_path / "qemu")
    for sample, (want, got) in enumerate(zip(host, emulated.outputs)):
        assert all(np.array_equal(a, b) for a, b in zip(want, got)), f"sample {sample} differs on the Cortex-M0"
