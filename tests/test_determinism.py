"""Determinism: generating twice from the same inputs writes byte-identical files.

Each generation runs in its own process with its own PYTHONHASHSEED and
writes into the same output folder, which the manifests record. An output
that depended on set or dict order, on the time or on an unseeded random
generator would differ between the two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bonsai_mcu.fuzz import seed_models

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits"


def generate(model: Path, out: Path, hash_seed: str, *options: str) -> dict[str, bytes]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    command = [sys.executable, "-c", "from bonsai_mcu.cli import main; main()", "-q", "generate", str(model),
               "-o", str(out), "--name", "model", *options]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    files = {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}
    shutil.rmtree(out)
    return files


@pytest.mark.parametrize("options", [
    ("--calibration", str(DIGITS / "digits_calibration.npy")),
    ("--weights", "int8", "--calibration", str(DIGITS / "digits_calibration.npy")),
    ("--weights", "float32"),
], ids=["ternary", "int8", "float32"])
def test_digits_generation_repeats(tmp_path, options):
    first = generate(DIGITS / "digits.onnx", tmp_path / "out", "1", *options)
    second = generate(DIGITS / "digits.onnx", tmp_path / "out", "2", *options)

    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two generations"


@pytest.mark.parametrize("weights", ["ternary", "float32"])
def test_cnn_generation_repeats(tmp_path, weights):
    """A CNN with every kind of layer and synthetic calibration (a seeded generator)."""
    model = tmp_path / "cnn.onnx"
    model.write_bytes(seed_models()[0].SerializeToString())

    first = generate(model, tmp_path / "out", "3", "--weights", weights, "--target", "cortex-m4")
    second = generate(model, tmp_path / "out", "4", "--weights", weights, "--target", "cortex-m4")

    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two generations"
