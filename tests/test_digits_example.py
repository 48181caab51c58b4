"""Checks of the committed digits example model in examples/digits/."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

DIGITS_DIR = Path(__file__).resolve().parent.parent / "examples" / "digits"


def gemm_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Return the B initializer of every Gemm node, keyed by node name."""
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    return {
        node.name: initializers[node.input[1]]
        for node in model.graph.node
        if node.op_type == "Gemm"
    }


def test_digits_onnx_accuracy():
    ort = pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed; install the test extra: pip install .[test]"
    )
    session = ort.InferenceSession(str(DIGITS_DIR / "digits.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.load(DIGITS_DIR / "digits_test.npy")
    labels = np.load(DIGITS_DIR / "digits_test_labels.npy")

    assert pixels.shape == (450, 64)
    assert pixels.dtype == np.float32
    assert labels.shape == (450,)
    assert labels.dtype == np.int64

    # The graph input is fixed at batch 1, as on a microcontroller.
    predictions = np.array(
        [session.run(["logits"], {"pixels": row[None, :]})[0].argmax() for row in pixels]
    )
    accuracy = float(np.mean(predictions == labels))
    assert accuracy >= 0.90, f"digits.onnx test accuracy {accuracy:.4f} is below 0.90"


def test_digits_gemm_rows_ternary():
    model = onnx.load(DIGITS_DIR / "digits.onnx")
    weights = gemm_weights(model)
    assert len(weights) == 3

    for name, weight in weights.items():
        for row_index, row in enumerate(weight):
            magnitudes = np.unique(np.abs(row[row != 0]))
            assert len(magnitudes) <= 1, f"{name} row {row_index} has magnitudes {magnitudes}"
            assert len(np.unique(row)) <= 3, f"{name} row {row_index} has values {np.unique(row)}"


def test_digits_calibration_shape():
    calibration = np.load(DIGITS_DIR / "digits_calibration.npy")
    assert calibration.shape == (200, 64)
    assert calibration.dtype == np.float32
    assert calibration.min() >= 0.0
    assert calibration.max() <= 1.0
