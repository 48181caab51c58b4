"""Fine-tune the MLPerf Tiny anomaly-detection autoencoder with ternary weights.

The float autoencoder (ad01_fp32.onnx: ten Gemm layers 640-128-128-128-128-
8-128-128-128-128-640 with ReLU between them) is loaded into PyTorch. Its
layers are made ternary (absmean, one scale per output channel) with int8
activation fake quantization, and the model is fine-tuned on its own
reconstruction loss. The script reports the mean squared reconstruction
error per window for:

    float                  the original model (onnxruntime)
    post-training ternary  bonsai-mcu on the float model: twn ternarization,
                           activations calibrated on the fine-tuning windows
    fine-tuned ternary     bonsai-mcu on the fine-tuned export (no calibration)

Both ternary rows are the int8 reference of bonsai-mcu, whose outputs the
generated C reproduces bit for bit. Errors are given on the windows used for
fine-tuning and on the held-out windows, since 40 windows are all there is.

Inputs, read from --models (default: ../shared/models from the repository
root): ad01_fp32.onnx and ad01_samples.npy (float32 [40, 640]). The
fine-tuned model is written to --out (default: build/ad01_finetune); it is
derived from ad01_fp32.onnx, so keep it out of the repository.

    pip install 'bonsai-mcu[train]'
    python examples/ad01_finetune/finetune.py [--models DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.quantize import QuantOptions
from bonsai_mcu.targets import load_target
from bonsai_mcu.train import convert_to_ternary, export_onnx, quantize_activations
from bonsai_mcu.verify import quantize_inputs, reference_outputs

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = REPOSITORY.parent / "shared" / "models"
SEED = 0
# The first windows fine-tune the model; the rest are held out.
FINE_TUNE_WINDOWS = 32
EPOCHS = 300
BATCH_SIZE = 8
LEARNING_RATE = 3e-4


class Autoencoder(nn.Module):
    """Linear layers with ReLU between them, the last one without."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def load_autoencoder(path: Path) -> Autoencoder:
    """Build the autoencoder from the Gemm nodes of `path` (transB=1: B is [out, in])."""
    model = onnx.load(str(path))
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    weights, biases = [], []
    for node in gemms:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB", 0) != 1 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ValueError(f"{path}: Gemm '{node.name}' is not a plain x @ B.T + C layer")
        weights.append(initializers[node.input[1]])
        biases.append(initializers[node.input[2]])

    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    autoencoder = Autoencoder(sizes)
    with torch.no_grad():
        for layer, weight, bias in zip(autoencoder.layers, weights, biases):
            layer.weight.copy_(torch.tensor(weight))
            layer.bias.copy_(torch.tensor(bias))
    return autoencoder.eval()


def fine_tune(model: nn.Module, windows: torch.Tensor) -> None:
    """Minimize the reconstruction error on `windows` with Adam, in place."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(windows), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = windows[order[start:start + BATCH_SIZE]]
            optimizer.zero_grad()
            nn.functional.mse_loss(model(batch), batch).backward()
            optimizer.step()
    model.eval()


def onnxruntime_errors(path: Path, windows: np.ndarray) -> np.ndarray:
    """Mean squared reconstruction error per window of the float model in onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = np.concatenate([session.run(None, {name: row[None]})[0] for row in windows])
    return np.mean((outputs - windows) ** 2, axis=1)


def reference_errors(path: Path, windows: np.ndarray, calibration: Path | None = None,
                     options: QuantOptions | None = None) -> np.ndarray:
    """Mean squared reconstruction error per window of bonsai-mcu's int8 reference (what the C computes)."""
    compiled = compile_model(path, load_target("host"), name="ad01", options=options, calibration=calibration)
    graph = compiled.graph
    samples = [[row[None].astype(np.float64)] for row in windows]
    outputs = reference_outputs(graph, quantize_inputs(graph, samples))
    output = graph.tensors[graph.outputs[0]]
    reconstructed = np.stack([output.qparams.dequantize(row[0]) for row in outputs])
    return np.mean((reconstructed - windows) ** 2, axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS,
                        help="folder with ad01_fp32.onnx and ad01_samples.npy (default: ../shared/models)")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "build" / "ad01_finetune",
                        help="folder for the fine-tuned ONNX and the calibration windows")
    args = parser.parse_args()
    float_path, samples_path = args.models / "ad01_fp32.onnx", args.models / "ad01_samples.npy"
    for path in (float_path, samples_path):
        if not path.is_file():
            print(f"error: {path} not found; pass --models FOLDER with ad01_fp32.onnx and ad01_samples.npy",
                  file=sys.stderr)
            return 1
    torch.manual_seed(SEED)
    torch.set_num_threads(1)

    windows = np.load(samples_path).astype(np.float32)
    tuning, held_out = windows[:FINE_TUNE_WINDOWS], windows[FINE_TUNE_WINDOWS:]
    args.out.mkdir(parents=True, exist_ok=True)
    calibration = args.out / "ad01_fine_tune_windows.npy"
    np.save(calibration, tuning)

    float_model = load_autoencoder(float_path)
    ternary_model = quantize_activations(convert_to_ternary(copy.deepcopy(float_model)))
    fine_tune(ternary_model, torch.from_numpy(tuning))
    fine_tuned_path = export_onnx(ternary_model, torch.from_numpy(windows[:1]), args.out / "ad01_ternary.onnx",
                                  input_names=["input_1"], output_names=["reconstruction"])

    rows = [
        ("float (onnxruntime)", lambda part: onnxruntime_errors(float_path, part)),
        ("post-training ternary (bonsai-mcu)",
         lambda part: reference_errors(float_path, part, calibration, QuantOptions(method="twn"))),
        ("fine-tuned ternary (bonsai-mcu)", lambda part: reference_errors(fine_tuned_path, part)),
    ]
    print(f"mean squared reconstruction error per window ({len(tuning)} fine-tuning, "
          f"{len(held_out)} held-out windows)")
    print(f"{'model':<36} {'fine-tuning':>12} {'held-out':>9} {'all 40':>7}")
    for label, errors in rows:
        tuning_error, held_out_error = errors(tuning), errors(held_out)
        overall = np.concatenate([tuning_error, held_out_error]).mean()
        print(f"{label:<36} {tuning_error.mean():>12.2f} {held_out_error.mean():>9.2f} {overall:>7.2f}")
    print(f"wrote {fine_tuned_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
