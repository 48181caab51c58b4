"""Command-line interface: generate, verify and inspect, their errors, the digits
example end to end, and a wheel installed into a fresh virtual environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

from bonsai_mcu.cli import main
from bonsai_mcu.data import load_samples
from bonsai_mcu.pipeline import compile_model, weight_summary
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import quantize_inputs, reference_outputs

from graphs import initializer, make_model, save

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits"


def run_cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder, hidden ones included, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(exit_code: int, stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert exit_code != 0
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def dense_model(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [1, 6])], [("y", [1, 4])],
                       [initializer("w", rng.standard_normal((6, 4)).astype(np.float32)),
                        initializer("b", rng.standard_normal(4).astype(np.float32))])
    return save(model, tmp_path, "dense")


@pytest.fixture
def calibration(tmp_path) -> Path:
    path = tmp_path / "calibration.npy"
    np.save(path, np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32))
    return path


# -- errors: one line on stderr, non-zero status, nothing written -------------------------------


def garbage_model(folder: Path) -> Path:
    path = folder / "garbage.onnx"
    path.write_bytes(b"\x08\x07not a protobuf at all" * 20)
    return path


def truncated_model(folder: Path, dense: Path) -> Path:
    data = dense.read_bytes()
    path = folder / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


def unsupported_model(folder: Path) -> Path:
    nodes = [helper.make_node("Cos", ["x"], ["a"], name="cosine"),
             helper.make_node("Sin", ["a"], ["y"], name="sine")]
    return save(make_model(nodes, [("x", [1, 6])], [("y", [1, 6])]), folder, "unsupported")


def wrong_shape_calibration(folder: Path) -> Path:
    path = folder / "wrong_shape.npy"
    np.save(path, np.zeros((8, 5), np.float32))
    return path


def wrong_dtype_calibration(folder: Path) -> Path:
    path = folder / "wrong_dtype.npy"
    np.save(path, np.zeros((8, 6), np.int32))
    return path


@pytest.mark.parametrize("case", ["malformed", "truncated", "unsupported", "calibration_shape",
                                  "calibration_dtype", "missing_model", "unknown_target", "invalid_name"])
def test_generate_errors(case, tmp_path, dense_model, calibration):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    model, calib, extra = dense_model, calibration, []
    if case == "malformed":
        model, expected = garbage_model(inputs), ["garbage.onnx: not a valid ONNX file"]
    elif case == "truncated":
        model, expected = truncated_model(inputs, dense_model), ["truncated.onnx: not a valid ONNX file"]
    elif case == "unsupported":
        model = unsupported_model(inputs)
        expected = ["2 unsupported constructs", "Cos node 'cosine'", "Sin node 'sine'"]
    elif case == "calibration_shape":
        calib, expected = wrong_shape_calibration(inputs), ["wrong_shape.npy: shape [8, 5]; expected [N, 6]"]
    elif case == "calibration_dtype":
        calib, expected = wrong_dtype_calibration(inputs), ["wrong_dtype.npy: dtype int32; expected float32"]
    elif case == "missing_model":
        model, expected = inputs / "absent.onnx", ["absent.onnx: model file not found"]
    elif case == "unknown_target":
        extra, expected = ["--target", "no-such-core"], ["unknown target 'no-such-core'", "cortex-m4"]
    else:
        extra, expected = ["--name", "9lives"], ["--name '9lives' is not a valid C identifier"]
    before = snapshot(tmp_path)

    result = run_cli("generate", model, "-o", tmp_path / "out", "--calibration", calib, *extra)

    assert_one_line_error(result.exit_code, result.stderr, *expected)
    assert result.stdout == ""
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_malformed_model_other_commands(command, tmp_path):
    model = garbage_model(tmp_path)
    extra = ["--inputs", tmp_path / "none.npy"] if command == "verify" else []
    before = snapshot(tmp_path)
    result = run_cli(command, model, *extra)
    assert_one_line_error(result.exit_code, result.stderr, "garbage.onnx: not a valid ONNX file")
    assert snapshot(tmp_path) == before


def test_verify_wrong_input_shape(tmp_path, dense_model, calibration):
    result = run_cli("verify", dense_model, "--calibration", calibration,
                     "--inputs", wrong_shape_calibration(tmp_path))
    assert_one_line_error(result.exit_code, result.stderr, "wrong_shape.npy: shape [8, 5]")


def test_verify_missing_compiler_option(tmp_path, dense_model, calibration):
    before = snapshot(tmp_path)
    result = run_cli("verify", dense_model, "--calibration", calibration, "--inputs", calibration,
                     "--cc", "/nonexistent/cc")
    assert_one_line_error(result.exit_code, result.stderr, "C compiler '/nonexistent/cc' not found", "--cc")
    assert snapshot(tmp_path) == before


def test_verify_missing_compiler_environment(tmp_path, dense_model, calibration):
    before = snapshot(tmp_path)
    result = run_cli("verify", dense_model, "--calibration", calibration, "--inputs", calibration,
                     env={"CC": "no-such-compiler-here"})
    assert_one_line_error(result.exit_code, result.stderr, "C compiler 'no-such-compiler-here' not found")
    assert snapshot(tmp_path) == before


def test_foreign_folder_refused(tmp_path, dense_model, calibration):
    out = tmp_path / "firmware"
    (out / "lib").mkdir(parents=True)
    (out / "main.c").write_text("int main(void) { return 0; }\n")
    (out / "lib" / "notes.txt").write_text("keep me\n")
    before = snapshot(out)

    result = run_cli("generate", dense_model, "-o", out, "--calibration", calibration)
    assert_one_line_error(result.exit_code, result.stderr, str(out), "--force")
    assert snapshot(out) == before

    forced = run_cli("generate", dense_model, "-o", out, "--calibration", calibration, "--force")
    assert forced.exit_code == 0, forced.stderr
    after = snapshot(out)
    assert after["main.c"] == before["main.c"]
    assert after["lib/notes.txt"] == before["lib/notes.txt"]
    assert "src/dense.c" in after


def test_regenerate_own_folder_identical(tmp_path, dense_model, calibration):
    out = tmp_path / "out"
    first = run_cli("generate", dense_model, "-o", out, "--calibration", calibration)
    assert first.exit_code == 0, first.stderr
    files = snapshot(out)
    assert {"src/dense.c", "src/dense.h", "src/dense_weights.c", "src/dense_kernels.h", ".bonsai-mcu"} <= set(files)

    second = run_cli("generate", dense_model, "-o", out, "--calibration", calibration)
    assert second.exit_code == 0, second.stderr
    assert snapshot(out) == files

    elsewhere = tmp_path / "elsewhere"
    third = run_cli("generate", dense_model, "-o", elsewhere, "--calibration", calibration)
    assert third.exit_code == 0, third.stderr
    sources = {name: data for name, data in files.items() if name.startswith("src/")}
    assert {name: data for name, data in snapshot(elsewhere).items() if name.startswith("src/")} == sources


def test_regenerate_removes_stale_files(tmp_path, dense_model, calibration):
    out = tmp_path / "out"
    assert run_cli("generate", dense_model, "-o", out, "--calibration", calibration, "--name", "old").exit_code == 0
    assert (out / "src" / "old.c").is_file()
    result = run_cli("generate", dense_model, "-o", out, "--calibration", calibration, "--name", "new")
    assert result.exit_code == 0, result.stderr
    assert not (out / "src" / "old.c").exists()
    assert (out / "src" / "new.c").is_file()


def test_synthetic_calibration_warning_on_stderr(tmp_path, dense_model):
    result = run_cli("generate", dense_model, "-o", tmp_path / "out")
    assert result.exit_code == 0
    assert "warning: no calibration data" in result.stderr
    assert "--calibration FILE" in result.stderr
    quiet = run_cli("--quiet", "generate", dense_model, "-o", tmp_path / "quiet")
    assert quiet.exit_code == 0
    assert quiet.stderr == ""
    assert quiet.stdout == ""


def test_inspect_lists_layers(dense_model):
    result = run_cli("inspect", dense_model)
    assert result.exit_code == 0, result.stderr
    assert "Dense" in result.stdout
    assert "fc" in result.stdout
    assert "total: 28 parameters, 24 MACs" in result.stdout


def inspect_totals(stdout: str) -> dict[str, int]:
    """Read the byte figures of inspect's total line."""
    line = next(line for line in stdout.splitlines() if line.startswith("total: "))
    figures = {}
    for label in ("weights and scales", "bias", "arena"):
        match = re.search(rf"{label} ([\d,]+) B", line)
        assert match, line
        figures[label] = int(match.group(1).replace(",", ""))
    return figures


def generate_totals(compiled) -> dict[str, int]:
    weights = weight_summary(compiled.graph, compiled.kernels)
    return {"weights and scales": weights["ternary_packed"] + weights["ternary_scales"] + weights["int8_bytes"],
            "bias": weights["bias_bytes"], "arena": compiled.plan.arena_size}


@pytest.mark.parametrize("target, extra_scratch", [("host", 0), ("cortex-m4", 0), ("cortex-m4", 20000)])
def test_inspect_matches_generate(tmp_path, target, extra_scratch):
    """With --extra-scratch the Dense layers take dense_lut, whose rows are padded to whole bytes."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="hidden", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="scores", transB=1)]
    model = make_model(nodes, [("x", [1, 40])], [("y", [1, 10])],
                       [initializer("w1", rng.standard_normal((64, 40)).astype(np.float32)),
                        initializer("w2", rng.standard_normal((10, 64)).astype(np.float32))])
    path = save(model, tmp_path, "mlp")

    result = run_cli("inspect", path, "--target", target, "--extra-scratch", extra_scratch)
    assert result.exit_code == 0, result.stderr
    assert f"(target {target})" in result.stdout
    compiled = compile_model(path, load_target(target), extra_scratch=extra_scratch)
    assert inspect_totals(result.stdout) == generate_totals(compiled)
    layer_bytes = [int(line.split()[-2].replace(",", "")) for line in result.stdout.splitlines()
                   if line.rstrip().endswith(("hidden", "scores"))]
    assert sum(layer_bytes) == inspect_totals(result.stdout)["weights and scales"]


def test_inspect_matches_generate_kws():
    model = REPO.parent / "shared" / "models" / "kws_ref_model.onnx"
    if not model.is_file():
        pytest.skip(f"{model} not found: the shared reference models sit in ../shared/models beside the repository")
    result = run_cli("inspect", model, "--target", "cortex-m4")
    assert result.exit_code == 0, result.stderr
    assert inspect_totals(result.stdout) == generate_totals(compile_model(model, load_target("cortex-m4")))


def test_inspect_no_calibration_warning(dense_model):
    result = run_cli("inspect", dense_model)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""


def test_inspect_prints_full_names(tmp_path):
    """Names are printed whole, because --keep-int8 takes them as inspect lists them."""
    name = "encoder/block_3/dense_projection/MatMul;encoder/block_3/bias_add"
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name=name, transB=1)]
    model = make_model(nodes, [("x", [1, 8])], [("y", [1, 4])],
                       [initializer("w", rng.standard_normal((4, 8)).astype(np.float32))])
    path = save(model, tmp_path, "long_names")

    result = run_cli("inspect", path)
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("0 "))
    assert row.endswith(f"  {name}")
    kept = run_cli("inspect", path, "--keep-int8", name)
    assert kept.exit_code == 0, kept.stderr
    assert "int8 per-" in kept.stdout


# -- the digits example ---------------------------------------------------------------------


def test_digits_verify_bit_exact():
    result = run_cli("verify", DIGITS / "digits.onnx", "--calibration", DIGITS / "digits_calibration.npy",
                     "--inputs", DIGITS / "digits_test.npy")
    assert result.exit_code == 0, result.stderr
    assert "host C vs reference: 450/450 samples bit-exact" in result.stdout


def test_digits_reference_accuracy():
    compiled = compile_model(DIGITS / "digits.onnx", load_target("host"),
                             calibration=DIGITS / "digits_calibration.npy")
    graph = compiled.graph
    samples = load_samples(DIGITS / "digits_test.npy", graph)
    outputs = reference_outputs(graph, quantize_inputs(graph, samples))
    predictions = np.array([row[0].astype(np.int32).argmax() for row in outputs])
    labels = np.load(DIGITS / "digits_test_labels.npy")

    assert predictions.shape == labels.shape == (450,)
    accuracy = float(np.mean(predictions == labels))
    assert accuracy >= 0.90, f"int8 reference accuracy {accuracy:.3f} on the 450 held-out digits"


# -- real processes ---------------------------------------------------------------------------


def console_script() -> str:
    path = shutil.which("bonsai-mcu") or str(Path(sys.executable).parent / "bonsai-mcu")
    assert Path(path).is_file(), "the bonsai-mcu console script is not installed; run: pip install -e '.[test]'"
    return path


def test_console_script_subprocess(tmp_path, dense_model, calibration):
    script = console_script()
    out = tmp_path / "out"
    ok = subprocess.run([script, "generate", str(dense_model), "-o", str(out), "-c", str(calibration)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (out / "src" / "dense.c").is_file()

    broken = garbage_model(tmp_path)
    failed = subprocess.run([script, "generate", str(broken), "-o", str(tmp_path / "broken")],
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(failed.returncode, failed.stderr, "not a valid ONNX file")
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "broken").exists()


def test_wheel_in_fresh_venv(tmp_path, dense_model, calibration):
    source = tmp_path / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("bonsai_mcu", "templates", "targets"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, text=True, timeout=300)
    wheel = next(wheels.glob("bonsai_mcu-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)

    # The wheel, not the development checkout, must provide the package and its data.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    located = subprocess.run([str(python), "-c", "import bonsai_mcu.codegen as c, bonsai_mcu.targets as t; "
                              "print(c.__file__); print(c.templates_dir()); print(t.targets_dir())"],
                             check=True, capture_output=True, text=True, cwd=workdir, env=env).stdout.split()
    for path in located:
        assert Path(path).resolve().is_relative_to(venv.resolve()), located
    assert (Path(located[1]) / "model.h.j2").is_file()
    assert (Path(located[1]) / "kernels" / "conv2d.c.j2").is_file()
    assert (Path(located[2]) / "cortex-m4.toml").is_file()

    out = tmp_path / "out"
    result = subprocess.run([str(venv / "bin" / "bonsai-mcu"), "generate", str(dense_model), "-o", str(out),
                             "-c", str(calibration), "--target", "cortex-m4"],
                            capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "src" / "dense.c").is_file()
    assert (out / "src" / "dense_kernels.h").is_file()
    assert "target cortex-m4" in (out / "src" / "dense.c").read_text()
