"""Command-line hardening: output files and folders that belong to the user, failed builds and
simulators, unwritable paths, a float runtime that rejects the model, and --quiet."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

from bonsai_mcu import BonsaiError
from bonsai_mcu.cli import main, mismatch_message
from bonsai_mcu.pipeline import GENERATED_MARK, MARKER, check_output_file, write_file
from bonsai_mcu.verify import Mismatch

from graphs import initializer, make_model, save


def run_cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments: str) -> None:
    lines = result.stderr.splitlines()
    assert result.exit_code != 0
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def dense_model(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")]
    model = make_model(nodes, [("x", [1, 6])], [("y", [1, 4])],
                       [initializer("w", rng.standard_normal((6, 4)).astype(np.float32)),
                        initializer("b", rng.standard_normal(4).astype(np.float32))])
    return save(model, tmp_path, "dense")


@pytest.fixture
def samples(tmp_path) -> Path:
    path = tmp_path / "samples.npy"
    np.save(path, np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32))
    return path


@pytest.fixture
def calibration(tmp_path) -> Path:
    path = tmp_path / "calibration.npy"
    np.save(path, np.random.default_rng(3).standard_normal((8, 6)).astype(np.float32))
    return path


@pytest.fixture
def regular_file(tmp_path) -> Path:
    path = tmp_path / "afile"
    path.write_text("a regular file\n")
    return path


def fake_compiler(folder: Path, program: str) -> Path:
    """Write a stand-in C compiler that writes `program` (a shell script) to its -o path."""
    path = folder / "fake-cc"
    path.write_text('#!/bin/sh\nwhile [ "$#" -gt 1 ]; do\n  if [ "$1" = "-o" ]; then out="$2"; fi\n  shift\n'
                    f'done\nprintf \'%s\\n\' \'#!/bin/sh\' \'{program}\' > "$out"\nchmod +x "$out"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# -- single output files: the model, user files, temporary file then rename -------------------


def test_report_rejects_input_model(tmp_path, dense_model):
    before = dense_model.read_bytes()
    result = run_cli("report", dense_model, "-o", dense_model)
    assert_one_line_error(result, "-o", str(dense_model), "input model")
    assert dense_model.read_bytes() == before


def test_report_rejects_user_file(tmp_path, dense_model):
    user_file = tmp_path / "notes.html"
    user_file.write_text("<p>my notes</p>\n")
    result = run_cli("report", dense_model, "-o", user_file)
    assert_one_line_error(result, "-o", str(user_file), "not written by bonsai-mcu", "--force")
    assert user_file.read_text() == "<p>my notes</p>\n"


def test_report_overwrites_own_report(tmp_path, dense_model):
    output = tmp_path / "report.html"
    first = run_cli("report", dense_model, "-o", output)
    assert first.exit_code == 0, first.stderr
    assert GENERATED_MARK in output.read_text()
    second = run_cli("report", dense_model, "-o", output)
    assert second.exit_code == 0, second.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.html")] == []


def test_report_force_overwrites_user_file(tmp_path, dense_model):
    user_file = tmp_path / "notes.html"
    user_file.write_text("<p>my notes</p>\n")
    result = run_cli("report", dense_model, "-o", user_file, "--force")
    assert result.exit_code == 0, result.stderr
    assert GENERATED_MARK in user_file.read_text()


def test_bench_rejects_user_file_before_run(tmp_path):
    user_file = tmp_path / "mybench.md"
    user_file.write_text("# my own benchmarks\n")
    # An unknown target would fail in the run; the output check must come first.
    result = run_cli("bench", "--target", "no-such-core", "-o", user_file)
    assert_one_line_error(result, "-o", str(user_file), "not written by bonsai-mcu")
    assert user_file.read_text() == "# my own benchmarks\n"


def test_write_file_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "page.md"
    write_file(path, f"{GENERATED_MARK} 1\n", "-o")

    def failing_replace(source, destination):
        raise OSError(28, "No space left on device", str(destination))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(BonsaiError, match="No space left on device"):
        write_file(path, f"{GENERATED_MARK} 2\n", "-o")
    assert path.read_text() == f"{GENERATED_MARK} 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.md"]


def test_check_output_file_accepts_generated_file(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\n{GENERATED_MARK} 0.1 with `bonsai-mcu bench`.\n")
    assert check_output_file(path, "-o") == path


# -- verify --keep: the output folder rule of generate ----------------------------------------


def test_verify_keep_rejects_user_folder(tmp_path, dense_model, samples):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "simulator_main.c").write_text("/* my own file */\n")
    result = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--keep", keep)
    assert_one_line_error(result, "--keep", str(keep), "not empty")
    assert (keep / "simulator_main.c").read_text() == "/* my own file */\n"


def test_verify_keep_writes_marker_and_reruns(tmp_path, dense_model, samples):
    keep = tmp_path / "build"
    first = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--keep", keep)
    assert first.exit_code == 0, first.stderr
    assert (keep / MARKER).is_file()
    assert (keep / "simulator").is_file()
    second = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--keep", keep)
    assert second.exit_code == 0, second.stderr


@pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                    reason="needs qemu-system-arm and arm-none-eabi-gcc")
def test_verify_keep_qemu_layout(tmp_path, dense_model, samples):
    keep = tmp_path / "build"
    result = run_cli("-q", "verify", dense_model, "--inputs", samples, "--calibration", samples,
                     "--on", "qemu", "--target", "cortex-m4", "--keep", keep)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert (keep / "qemu" / "firmware.elf").is_file()
    assert not (keep / "qemu" / "qemu").exists()


# -- build and simulator failures, unwritable paths, long names, float runtime ----------------


def test_compiler_writing_nothing(dense_model, samples):
    result = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--cc", "/bin/true")
    assert_one_line_error(result, "/bin/true", "wrote no executable")


def test_compiler_failing_silently(dense_model, samples):
    result = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--cc", "/bin/false")
    assert_one_line_error(result, "host build failed (/bin/false)", "exited with status 1")


def test_simulator_writing_no_outputs(tmp_path, dense_model, samples):
    compiler = fake_compiler(tmp_path, "exit 0")
    result = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--cc", compiler)
    assert_one_line_error(result, "wrote no outputs file", "outputs.bin")


def test_simulator_killed_by_signal(tmp_path, dense_model, samples):
    compiler = fake_compiler(tmp_path, "kill -SEGV $$")
    result = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--cc", compiler)
    assert_one_line_error(result, "host simulator", "killed by SIGSEGV")


@pytest.mark.parametrize("command", ["generate", "verify", "report", "bench"])
def test_output_under_regular_file(command, tmp_path, dense_model, samples, regular_file):
    output = regular_file / "sub"
    arguments = {
        "generate": ["generate", dense_model, "-o", output],
        "verify": ["verify", dense_model, "--inputs", samples, "--calibration", samples, "--keep", output],
        "report": ["report", dense_model, "-o", output / "r.html"],
        # The unknown target shows that the path is checked before the run.
        "bench": ["bench", "--target", "no-such-core", "-o", output / "b.md"],
    }[command]
    result = run_cli(*arguments)
    assert_one_line_error(result, str(regular_file), "is a file, not a folder")
    assert regular_file.read_text() == "a regular file\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs the Linux /proc file system")
@pytest.mark.parametrize("command", ["generate", "report"])
def test_output_under_proc(command, dense_model, calibration):
    output = Path("/proc/bonsai-test-x") if command == "generate" else Path("/proc/bonsai-test-r.html")
    result = run_cli(command, dense_model, "-o", output, "--calibration", calibration)
    assert_one_line_error(result, "-o", str(output), "cannot")


def test_name_too_long(tmp_path, dense_model):
    result = run_cli("generate", dense_model, "-o", tmp_path / "out", "--name", "n" * 300)
    assert_one_line_error(result, "--name", "300 characters", "at most 64")
    assert not (tmp_path / "out").exists()


def test_float_runtime_rejection_keeps_bit_exact(tmp_path):
    # onnxruntime rejects dilations with auto_pad SAME_UPPER; the importer does not.
    rng = np.random.default_rng(2)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad="SAME_UPPER", dilations=[2, 2])
    model = save(make_model([node], [("x", [1, 2, 8, 8])], [("y", None)],
                            [initializer("w", rng.standard_normal((3, 2, 3, 3)).astype(np.float32))]),
                 tmp_path, "dilated")
    inputs = tmp_path / "images.npy"
    np.save(inputs, rng.standard_normal((2, 2, 8, 8)).astype(np.float32))
    result = run_cli("verify", model, "--inputs", inputs, "--calibration", inputs)
    assert result.exit_code == 0, result.stderr
    assert "host C vs reference: 2/2 samples bit-exact" in result.stdout
    assert "reference vs float" not in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: onnxruntime")]
    assert len(warnings) == 1, result.stderr
    assert "skipping the agreement" in warnings[0]


# -- targets that cannot run the request ---------------------------------------------------


def test_float32_on_qemu_rejected(dense_model, samples):
    result = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--weights", "float32", "--on", "qemu",
                     "--target", "cortex-m4")
    assert_one_line_error(result, "--weights float32", "--on qemu", "use --on host")


def test_qemu_on_host_target(dense_model, samples):
    result = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples, "--on", "qemu")
    assert_one_line_error(result, "target host has no QEMU board", "cortex-m4")
    assert "size" not in result.stderr


def test_size_needs_cross_target(dense_model):
    result = run_cli("size", dense_model)
    assert_one_line_error(result, "size needs a cross target", "--target", "cortex-m4")


# -- which comparison failed ------------------------------------------------------------------


def test_qemu_mismatch_message():
    text = mismatch_message([Mismatch(1, 0, 3, 5, 6)], "cortex-m4 C under QEMU", "host C")
    assert text.startswith("1 output(s) differ between cortex-m4 C under QEMU and host C")
    assert "host C 5, cortex-m4 C under QEMU 6" in text


# -- --quiet ----------------------------------------------------------------------------------


def test_quiet_verify_prints_nothing(dense_model, samples):
    result = run_cli("-q", "verify", dense_model, "--inputs", samples, "--calibration", samples)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    loud = run_cli("verify", dense_model, "--inputs", samples, "--calibration", samples)
    assert "host C vs reference" in loud.stdout


def test_quiet_verify_still_fails(dense_model, samples):
    result = run_cli("-q", "verify", dense_model, "--inputs", samples, "--calibration", samples, "--cc", "/bin/false")
    assert_one_line_error(result, "host build failed")
    assert result.stdout == ""
