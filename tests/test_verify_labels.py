"""verify --labels: accuracy of the float and the quantized model against real labels."""

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from bonsai_mcu.cli import main

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits"


def run_verify(labels: Path):
    return CliRunner().invoke(main, [
        "verify", str(DIGITS / "digits.onnx"), "--inputs", str(DIGITS / "digits_test.npy"),
        "--calibration", str(DIGITS / "digits_calibration.npy"), "--labels", str(labels)])


def test_labels_report_accuracy():
    result = run_verify(DIGITS / "digits_test_labels.npy")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("accuracy against"))
    float_accuracy = float(line.split("float model ")[1].split("%")[0])
    quantized_accuracy = float(line.split("quantized C ")[1].split("%")[0])
    assert float_accuracy >= 90.0
    assert quantized_accuracy >= 90.0


def test_labels_wrong_count_rejected(tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(3, dtype=np.int64))
    result = run_verify(labels)
    assert result.exit_code != 0
    assert "3 labels for 450 input samples" in result.output


def test_labels_wrong_dtype_rejected(tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(450, dtype=np.float32))
    result = run_verify(labels)
    assert result.exit_code != 0
    assert "expected integer labels" in result.output
