"""Train a ternary convolutional network on scikit-learn's 8x8 digits with bonsai_mcu.train.

The same network is trained twice from one initialization: in float, and
then, starting from the float weights, quantization-aware with ternary
weights (absmean, one scale per output channel) and int8 activations placed
where the generated C rounds them. Both held-out accuracies are printed.

    pixels [1, 1, 8, 8]
    -> Conv 3x3, 16 -> BatchNorm -> ReLU
    -> Conv 3x3, 32 -> BatchNorm -> ReLU -> MaxPool 2
    -> Conv 3x3, 32 -> BatchNorm -> ReLU -> MaxPool 2
    -> Flatten -> Linear 128 -> 10 -> logits [1, 10]

Output, in --out (default: this script's folder):

    digits_cnn.onnx   opset 13; Conv and Gemm weights are float32 t * s
                      (BatchNorm folded in by the exporter) and every
                      activation carries a QuantizeLinear -> DequantizeLinear
                      pair, so bonsai-mcu needs no calibration data.

Held-out split: train_test_split(test_size=0.25, random_state=0,
stratify=labels) of pixel / 16, the split of examples/digits (450 images).

    pip install 'bonsai-mcu[train]'
    python examples/digits_cnn/train.py [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from bonsai_mcu.train import convert_to_ternary, export_onnx, quantize_activations

SEED = 0
FLOAT_EPOCHS = 40
TERNARY_EPOCHS = 40
BATCH_SIZE = 32
FLOAT_LEARNING_RATE = 3e-3
TERNARY_LEARNING_RATE = 1e-3


@dataclass
class DigitsSplit:
    x_train: torch.Tensor  # float32 [1347, 1, 8, 8], pixel / 16
    y_train: torch.Tensor  # int64 [1347]
    x_test: torch.Tensor  # float32 [450, 1, 8, 8]
    y_test: torch.Tensor  # int64 [450]


def load_split() -> DigitsSplit:
    """Load the 1797 digits as [N, 1, 8, 8] images and hold out a stratified 25%."""
    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, labels, test_size=0.25, random_state=0, stratify=labels
    )
    return DigitsSplit(*(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)))


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def train(model: nn.Module, split: DigitsSplit, epochs: int, learning_rate: float, seed: int = SEED) -> None:
    """Train with Adam and a cosine learning-rate decay to 0, in place."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps = epochs * math.ceil(len(split.x_train) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(split.x_train), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(split.x_train[batch]), split.y_train[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(dim=1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for digits_cnn.onnx (default: this script's folder)")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    # One thread keeps the run repeatable and leaves the other cores free.
    torch.set_num_threads(1)

    split = load_split()
    float_model = DigitsCNN()
    train(float_model, split, FLOAT_EPOCHS, FLOAT_LEARNING_RATE)
    float_accuracy = accuracy(float_model, split.x_test, split.y_test)

    ternary_model = convert_to_ternary(copy.deepcopy(float_model))
    ternary_model = quantize_activations(ternary_model)
    train(ternary_model, split, TERNARY_EPOCHS, TERNARY_LEARNING_RATE)
    ternary_accuracy = accuracy(ternary_model, split.x_test, split.y_test)

    print(f"held-out accuracy, float:                          {float_accuracy:.4f}")
    print(f"held-out accuracy, ternary weights, int8 activations: {ternary_accuracy:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    path = export_onnx(ternary_model, split.x_test[:1], args.out / "digits_cnn.onnx",
                       input_names=["pixels"], output_names=["logits"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
