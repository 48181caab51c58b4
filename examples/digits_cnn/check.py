"""Compile digits_cnn.onnx with bonsai-mcu and check it on all 450 held-out digits.

The script compiles the model without calibration data, because the model
contains its activation scales, and prints the held-out accuracy of the int8
reference. It then checks that the generated C gives the same int8 outputs,
and so the same predictions, as the reference: on the host, and under QEMU
on Cortex-M4 when arm-none-eabi-gcc and qemu-system-arm are installed.
Needs no PyTorch.

    python examples/digits_cnn/check.py [--model FILE] [--skip-qemu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bonsai_mcu import BonsaiError
from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import build_simulator, quantize_inputs, reference_outputs, run_simulator

HERE = Path(__file__).resolve().parent


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the held-out images [450, 1, 8, 8] (pixel / 16) and labels [450] of train.py's split."""
    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    _, x_test, _, y_test = train_test_split(pixels, labels, test_size=0.25, random_state=0, stratify=labels)
    return x_test, y_test


def predictions(outputs: list[list[np.ndarray]]) -> np.ndarray:
    """Top-1 class of each sample's int8 logits (the argmax of the codes is that of the real values)."""
    return np.array([row[0].argmax() for row in outputs])


def check_host(model: Path, samples, labels) -> tuple[float, int]:
    """Return the reference's accuracy and the number of samples where host C and reference agree exactly."""
    compiled = compile_model(model, load_target("host"), name="digits_cnn")
    graph = compiled.graph
    inputs = quantize_inputs(graph, samples)
    expected = reference_outputs(graph, inputs)
    with tempfile.TemporaryDirectory(prefix="digits-cnn-") as folder:
        executable = build_simulator(compiled.files, graph, Path(folder))
        actual = run_simulator(executable, graph, inputs)
    same = sum(all(np.array_equal(a, b) for a, b in zip(want, got)) for want, got in zip(expected, actual))
    return float(np.mean(predictions(expected) == labels)), same


def check_cortex_m4(model: Path, samples) -> int:
    """Return the number of samples where the C under QEMU (Cortex-M4) and the reference agree exactly."""
    from bonsai_mcu import emulate

    target = emulate.require_toolchain("cortex-m4", emulator=True)
    compiled = compile_model(model, target, name="digits_cnn")
    graph = compiled.graph
    inputs = quantize_inputs(graph, samples)
    expected = reference_outputs(graph, inputs)
    with tempfile.TemporaryDirectory(prefix="digits-cnn-m4-") as folder:
        source_dir = Path(folder) / "src"
        source_dir.mkdir()
        for name, text in compiled.files.items():
            (source_dir / name).write_text(text)
        sources = sorted(source_dir.glob("*.c"))
        sizes = [graph.tensors[name].size for name in graph.outputs]
        result = emulate.emulate(target, sources, [source_dir], graph.name, inputs, sizes, Path(folder),
                                 timeout_s=300)
    return sum(all(np.array_equal(a, b) for a, b in zip(want, got))
               for want, got in zip(expected, result.outputs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=HERE / "digits_cnn.onnx", help="model to check")
    parser.add_argument("--skip-qemu", action="store_true", help="check on the host only")
    args = parser.parse_args()

    images, labels = held_out_digits()
    samples = [[image[None].astype(np.float64)] for image in images]
    accuracy, host_same = check_host(args.model, samples, labels)
    print(f"int8 reference, held-out accuracy: {accuracy:.4f} ({round(accuracy * len(labels))} / {len(labels)})")
    print(f"host C equal to the reference:     {host_same} / {len(samples)} samples")
    failed = host_same != len(samples)

    if not args.skip_qemu:
        try:
            m4_same = check_cortex_m4(args.model, samples)
        except BonsaiError as error:
            print(f"Cortex-M4 under QEMU: not run ({error})")
        else:
            print(f"Cortex-M4 C (QEMU) equal to the reference: {m4_same} / {len(samples)} samples")
            failed = failed or m4_same != len(samples)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
