"""Tests of bonsai_mcu.emulate and bonsai_mcu.size on QEMU boards, with hand-written stand-in
models from tests/stand_in/ in place of generated code.

A test whose cross compiler or QEMU is missing is skipped with the apt-get command in the
reason, unless the environment variable CI is set: then it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bonsai_mcu import BonsaiError
from bonsai_mcu import emulate
from bonsai_mcu.size import measure_size, read_sections
from bonsai_mcu.targets import load_target

STAND_IN = Path(__file__).resolve().parent / "stand_in"
TOY_SOURCES = [STAND_IN / name for name in ("toy.c", "toy_weights.c", "toy_dense.c", "toy_add.c")]
TOY_OUTPUT_SIZES = [8, 32]

QEMU_TARGETS = [
    "cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "esp32c3",
]
XTENSA_TARGETS = ["esp32", "esp32s3"]
ELF_MACHINE_XTENSA = 94


def require(target_name: str, emulator: bool = True):
    """Return the Target if its tools are installed; skip (fail under CI) otherwise."""
    try:
        return emulate.require_toolchain(target_name, emulator=emulator)
    except BonsaiError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so a missing tool fails: {error}")
        pytest.skip(str(error))


def toy_reference(input_0: np.ndarray, input_1: np.ndarray) -> list[np.ndarray]:
    """Compute the toy stand-in model in numpy (formulas of tests/stand_in/toy_weights.c)."""
    j = np.arange(8)[:, None]
    i = np.arange(32)[None, :]
    weights = ((3 * i + 7 * j + i * j) % 5 - 2).astype(np.int32)
    bias = (1000 * np.arange(8) - 3500).astype(np.int32)

    accumulators = bias + weights @ input_0.astype(np.int32)
    output_0 = np.clip((accumulators + 32) >> 6, -128, 127).astype(np.int8)
    output_1 = np.clip(input_0.astype(np.int32) + input_1, -128, 127).astype(np.int8)
    return [output_0, output_1]


def toy_samples() -> list[list[np.ndarray]]:
    rng = np.random.default_rng(7)
    samples = [
        [rng.integers(-128, 128, 32, dtype=np.int8), rng.integers(-128, 128, 32, dtype=np.int8)]
        for _ in range(3)
    ]
    # Extremes drive both outputs into saturation at either end.
    samples.append([np.full(32, 127, np.int8), np.full(32, 127, np.int8)])
    samples.append([np.full(32, -128, np.int8), np.full(32, -128, np.int8)])
    return samples


def spin_input(iterations: int) -> list[np.ndarray]:
    return [np.frombuffer(np.uint32(iterations).tobytes(), dtype=np.int8).copy()]


# ===== Stand-in model on every QEMU board =====


@pytest.mark.parametrize("target_name", QEMU_TARGETS)
def test_toy_outputs_match_numpy(target_name, tmp_path):
    target = require(target_name)
    samples = toy_samples()

    result = emulate.emulate(
        target, TOY_SOURCES, [STAND_IN], "toy", samples, TOY_OUTPUT_SIZES, tmp_path, timeout_s=60
    )

    assert len(result.outputs) == len(samples)
    for sample, outputs in zip(samples, result.outputs):
        expected = toy_reference(*sample)
        assert len(outputs) == 2
        np.testing.assert_array_equal(outputs[0], expected[0])
        np.testing.assert_array_equal(outputs[1], expected[1])
    assert all(count > 0 for count in result.instructions)


def test_toy_reference_saturates():
    samples = toy_samples()

    high = toy_reference(*samples[3])
    low = toy_reference(*samples[4])

    assert (high[1] == 127).all()
    assert (low[1] == -128).all()
    assert 127 in high[0]
    assert -128 in low[0]


# ===== Instruction counts =====


@pytest.mark.parametrize("target_name", QEMU_TARGETS)
def test_count_matches_known_loop(target_name, tmp_path):
    """Two more instructions per extra iteration: checks the counter and, for SysTick,
    the instructions per tick derived from [qemu] counter_clock_hz."""
    target = require(target_name)
    short, long = 1_000, 1_001_000
    added_instructions = 2 * (long - short)

    result = emulate.emulate(
        target, [STAND_IN / "spin.c"], [STAND_IN], "spin",
        [spin_input(short), spin_input(long)], [4], tmp_path, timeout_s=60,
    )

    tick = result.instructions_per_count
    # At least the loop's own instructions, give or take one tick.
    assert result.instructions[0] >= 2 * short - tick
    assert result.instructions[1] > result.instructions[0]
    measured = result.instructions[1] - result.instructions[0]
    # One tick of resolution, plus up to 1 from rounding each count to whole instructions.
    assert abs(measured - added_instructions) <= tick + 1
    assert added_instructions / (result.counts[1] - result.counts[0]) == pytest.approx(tick, rel=1e-4)
    np.testing.assert_array_equal(result.outputs[1][0], spin_input(long)[0])


def test_instructions_per_tick_by_board():
    expected = {
        "cortex-m0plus": 62.5, "cortex-m3": 40.0, "cortex-m4": 40.0, "cortex-m7": 40.0,
        "cortex-m33": 50.0, "cortex-m55": 31.25, "esp32c3": 1.0,
    }

    measured = {name: emulate.instructions_per_count(load_target(name)) for name in expected}

    assert measured == expected


def test_systick_count_past_wrap(tmp_path):
    """800 M instructions are 20 M ticks at 40 per tick, past the 24-bit SysTick range."""
    target = require("cortex-m3")
    short, long = 1_000, 400_001_000

    result = emulate.emulate(
        target, [STAND_IN / "spin.c"], [STAND_IN], "spin",
        [spin_input(short), spin_input(long)], [4], tmp_path, timeout_s=120,
    )

    assert result.counts[1] > 1 << 24
    measured = result.instructions[1] - result.instructions[0]
    assert abs(measured - 2 * (long - short)) <= result.instructions_per_count + 1


# ===== Failures end in BonsaiError =====


@pytest.mark.parametrize("target_name", QEMU_TARGETS)
def test_fault_raises(target_name, tmp_path):
    target = require(target_name)
    samples = [[np.zeros(1, np.int8)], [np.ones(1, np.int8)]]
    started = time.monotonic()

    with pytest.raises(BonsaiError) as raised:
        emulate.emulate(
            target, [STAND_IN / "fault.c"], [STAND_IN], "fault", samples, [1], tmp_path, timeout_s=30
        )

    message = str(raised.value)
    assert "crashed" in message
    assert "fault_run" in message
    assert "1 of 2 samples finished" in message
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("target_name", ["cortex-m4", "esp32c3"])
def test_hang_times_out(target_name, tmp_path):
    target = require(target_name)
    started = time.monotonic()

    with pytest.raises(BonsaiError, match="timed out after 2 s with 0 of 1 samples"):
        emulate.emulate(
            target, [STAND_IN / "hang.c"], [STAND_IN], "hang", [[np.zeros(1, np.int8)]], [1],
            tmp_path, timeout_s=2,
        )

    assert time.monotonic() - started < 2 + 10


def test_fewer_samples_than_expected_raise(tmp_path):
    target = require("cortex-m4")
    elf = emulate.build_firmware(
        target, [STAND_IN / "spin.c"], [STAND_IN], "spin", [spin_input(1), spin_input(2)], [4],
        tmp_path,
    )

    with pytest.raises(BonsaiError, match="embeds 2 samples, 3 were expected"):
        emulate.run_firmware(target, elf, 3, [4], timeout_s=30)
    with pytest.raises(BonsaiError, match="has 4 bytes for output 0, expected 5"):
        emulate.run_firmware(target, elf, 2, [5], timeout_s=30)


def test_compile_error_shows_compiler_output(tmp_path):
    target = require("cortex-m4", emulator=False)
    broken = tmp_path / "broken.c"
    broken.write_text("int broken_run(void) { return undeclared_name; }\n")

    with pytest.raises(BonsaiError) as raised:
        emulate.compile_only(target, [broken], [], tmp_path)

    assert "broken.c" in str(raised.value)
    assert "undeclared_name" in str(raised.value)


def test_ram_overflow_fails_link(tmp_path):
    target = require("cortex-m0plus")
    (tmp_path / "big.h").write_text(
        "#include <stdint.h>\nint big_run(const int8_t *input_0, int8_t *output_0);\n"
    )
    # 20000 bytes of arena do not fit in the microbit's 16 KB of RAM.
    (tmp_path / "big.c").write_text(
        "#include <string.h>\n#include \"big.h\"\n"
        "static uint8_t arena[20000] __attribute__((section(\".bss.bonsai_arena\")));\n"
        "int big_run(const int8_t *input_0, int8_t *output_0) {\n"
        "    memset(arena, input_0[0], sizeof arena);\n"
        "    output_0[0] = (int8_t)arena[input_0[0] & 1];\n"
        "    return 0;\n}\n"
    )

    with pytest.raises(BonsaiError, match="RAM overflow"):
        emulate.build_firmware(
            target, [tmp_path / "big.c"], [tmp_path], "big", [[np.zeros(1, np.int8)]], [1],
            tmp_path / "build",
        )


def test_float_input_rejected(tmp_path):
    target = require("cortex-m4")

    with pytest.raises(BonsaiError, match="dtype float32"):
        emulate.build_firmware(
            target, TOY_SOURCES, [STAND_IN], "toy",
            [[np.zeros(32, np.float32), np.zeros(32, np.int8)]], TOY_OUTPUT_SIZES, tmp_path,
        )


def test_mismatched_samples_rejected(tmp_path):
    target = require("cortex-m4")
    samples = [
        [np.zeros(32, np.int8), np.zeros(32, np.int8)],
        [np.zeros(32, np.int8), np.zeros(16, np.int8)],
    ]

    with pytest.raises(BonsaiError, match="sample 1 has input sizes"):
        emulate.build_firmware(
            target, TOY_SOURCES, [STAND_IN], "toy", samples, TOY_OUTPUT_SIZES, tmp_path
        )


def test_target_without_qemu_rejected(tmp_path):
    target = require("esp32", emulator=False)

    with pytest.raises(BonsaiError, match="has no \\[qemu\\] table"):
        emulate.build_firmware(
            target, TOY_SOURCES, [STAND_IN], "toy", toy_samples(), TOY_OUTPUT_SIZES, tmp_path
        )


def write_target(folder: Path, compiler: str, qemu_system: str) -> Path:
    path = folder / "missing-tools.toml"
    path.write_text(
        f'name = "missing-tools"\narch = "armv7-m"\n'
        f'[compiler]\ncc = "{compiler}"\ntriple = "arm-none-eabi"\ncflags = ["-mcpu=cortex-m3", "-mthumb"]\n'
        f'apt_packages = ["gcc-arm-none-eabi", "libnewlib-arm-none-eabi"]\n'
        f'[qemu]\nsystem = "{qemu_system}"\nmachine = "mps2-an385"\napt_packages = ["qemu-system-arm"]\n'
        f'harness = "cortex-m"\ncounter = "systick"\ncounter_clock_hz = 25_000_000\n'
    )
    return path


def test_missing_compiler_names_apt_package(tmp_path):
    target = load_target(str(write_target(tmp_path, "bonsai-test-no-such-gcc", "qemu-system-arm")))

    with pytest.raises(BonsaiError) as raised:
        emulate.build_firmware(
            target, TOY_SOURCES, [STAND_IN], "toy", toy_samples(), TOY_OUTPUT_SIZES, tmp_path
        )

    assert "bonsai-test-no-such-gcc not found" in str(raised.value)
    assert "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi" in str(raised.value)


def test_missing_qemu_names_apt_package(tmp_path):
    elf = tmp_path / "firmware.elf"
    elf.write_bytes(b"\x7fELF")
    target = load_target(str(write_target(tmp_path, "arm-none-eabi-gcc", "bonsai-test-no-such-qemu")))

    with pytest.raises(BonsaiError) as raised:
        emulate.run_firmware(target, elf, 1, [1], timeout_s=5)

    assert "bonsai-test-no-such-qemu not found" in str(raised.value)
    assert "apt-get install qemu-system-arm" in str(raised.value)


# ===== Output parsing and process supervision =====


GOOD_OUTPUT = (
    "bonsai-harness start 00000001\n"
    "overhead 0000000000000002\n"
    "sample 00000000 return 00000000 count 000000000000000c output 7f80 output 01\n"
    "bonsai-harness end\n"
)


def test_parse_reads_outputs_and_counts():
    result = emulate.parse_harness_output(GOOD_OUTPUT, 1, [2, 1], instructions_per_count=40.0)

    np.testing.assert_array_equal(result.outputs[0][0], np.array([127, -128], np.int8))
    np.testing.assert_array_equal(result.outputs[0][1], np.array([1], np.int8))
    assert result.counts == [12]
    assert result.overhead == 2
    assert result.instructions == [400]


@pytest.mark.parametrize(
    "text, message",
    [
        ("random noise\n", "no start line"),
        (GOOD_OUTPUT.replace("bonsai-harness end\n", ""), "should be the end marker"),
        (GOOD_OUTPUT.replace("output 7f80", "output 7fzz"), "not hexadecimal"),
        (GOOD_OUTPUT.replace("count 000000000000000c", "count c"), "1-digit number"),
        (GOOD_OUTPUT.replace("sample 00000000 return", "garbage 00000000 return"), "is not the line"),
        (GOOD_OUTPUT.replace("return 00000000", "return ffffffff"), "returned -1 for sample 0"),
    ],
)
def test_parse_rejects_bad_output(text, message):
    with pytest.raises(BonsaiError, match=message):
        emulate.parse_harness_output(text, 1, [2, 1])


def fake_qemu(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_supervise_stops_after_end_marker(tmp_path):
    log = tmp_path / "semihosting.txt"
    # Prints the end marker, then keeps running like a RISC-V program whose exit does not end QEMU.
    script = f"import time; open({str(log)!r}, 'w').write('{emulate.HARNESS_END}\\n'); time.sleep(60)"
    started = time.monotonic()

    outcome = emulate._supervise(fake_qemu(script), tmp_path / "qemu.txt", log, 30.0, 10_000)

    assert outcome == "stopped after end marker"
    assert time.monotonic() - started < 10


def test_supervise_stops_flood_of_output(tmp_path):
    log = tmp_path / "semihosting.txt"
    script = f"f = open({str(log)!r}, 'w')\nwhile True:\n    f.write('x' * 1000); f.flush()"

    outcome = emulate._supervise(fake_qemu(script), tmp_path / "qemu.txt", log, 30.0, 100_000)

    assert outcome == "too much output"


def test_supervise_times_out(tmp_path):
    outcome = emulate._supervise(
        fake_qemu("import time; time.sleep(60)"), tmp_path / "qemu.txt", tmp_path / "log.txt", 0.5, 1000
    )

    assert outcome == "timeout"


# ===== Compile-only targets and sizes =====


@pytest.mark.parametrize("target_name", XTENSA_TARGETS)
def test_xtensa_compile_only(target_name, tmp_path):
    target = require(target_name, emulator=False)

    objects = emulate.compile_only(target, TOY_SOURCES, [STAND_IN], tmp_path)

    assert [path.name for path in objects] == [f"{index:03d}_{source.stem}.o" for index, source in enumerate(TOY_SOURCES)]
    for path in objects:
        machine, _sections = read_sections(path)
        assert machine == ELF_MACHINE_XTENSA


def berkeley_sizes(size_tool: str, objects: list[Path]) -> dict[str, tuple[int, int, int]]:
    """Return {object path: (text, data, bss)} from the size tool's Berkeley output."""
    completed = subprocess.run([size_tool, *map(str, objects)], capture_output=True, text=True, check=True)
    rows = {}
    for line in completed.stdout.splitlines()[1:]:
        fields = line.split()
        rows[fields[5]] = (int(fields[0]), int(fields[1]), int(fields[2]))
    return rows


def section_size(size_tool: str, path: Path, name: str) -> int:
    completed = subprocess.run([size_tool, "-A", str(path)], capture_output=True, text=True, check=True)
    for line in completed.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return int(fields[1])
    return 0


@pytest.mark.parametrize("target_name", ["cortex-m0plus", "cortex-m4", "esp32c3", "esp32"])
def test_size_matches_size_tool(target_name, tmp_path):
    target = require(target_name, emulator=False)
    size_tool = shutil.which(f"{target.triple}-size")
    if size_tool is None:
        require_message = f"{target.triple}-size not found; install binutils for {target.triple}"
        if os.environ.get("CI"):
            pytest.fail(require_message)
        pytest.skip(require_message)
    objects = emulate.compile_only(target, TOY_SOURCES, [STAND_IN], tmp_path)

    report = measure_size(target, objects)

    berkeley = berkeley_sizes(size_tool, objects)
    for entry in report["objects"]:
        text, data, bss = berkeley[entry["path"]]
        flash, ram = entry["flash"], entry["ram"]
        assert flash["code"] + flash["rodata"] + flash["weights"] == text
        assert flash["data"] == data
        assert ram["arena"] + ram["bss"] == bss
    # 8x32 int8 weights and 8 int32 biases. The arena is 8 int32 accumulators.
    assert report["flash"]["weights"] == 8 * 32 + 8 * 4
    assert report["flash"]["weights"] == section_size(size_tool, objects[1], target.weights_section)
    assert report["ram"]["arena"] == 8 * 4
    assert report["ram"]["arena"] == section_size(size_tool, objects[0], target.arena_section)
    assert report["flash"]["code"] > 0
    assert report["flash"]["total"] == sum(text + data for text, data, _bss in berkeley.values())
    assert report["ram"]["total"] == sum(data + bss for _text, data, bss in berkeley.values())


def test_size_rejects_other_architecture(tmp_path):
    require("cortex-m4", emulator=False)
    target = require("esp32c3", emulator=False)
    objects = emulate.compile_only(target, [STAND_IN / "toy_add.c"], [STAND_IN], tmp_path)

    with pytest.raises(BonsaiError, match="not for target cortex-m4"):
        measure_size("cortex-m4", objects)


def test_size_needs_weights_section(tmp_path):
    target = require("cortex-m4", emulator=False)
    objects = emulate.compile_only(target, [STAND_IN / "toy_add.c"], [STAND_IN], tmp_path)

    with pytest.raises(BonsaiError, match="names no weights section"):
        measure_size(target, objects, weights_section="")


# ===== Target files =====


@pytest.mark.parametrize("target_name", QEMU_TARGETS)
def test_qemu_target_has_board_settings(target_name):
    target = load_target(target_name)

    for key in ("system", "machine", "apt_packages", "harness", "flash_origin", "flash_size", "ram_origin", "ram_size", "stack_size", "counter"):
        assert key in target.qemu, key
    assert target.apt_packages
    assert target.weights_section and target.arena_section
