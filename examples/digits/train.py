"""Train a ternary-weight MLP on scikit-learn's 8x8 digits and export it to ONNX.

The network is 64 -> 64 -> 32 -> 10 with ReLU between layers and logits out.
Training is quantization-aware. Every forward pass uses ternarized weights
t * s with a per-output-channel absmean scale (BitNet b1.58), and the
straight-through estimator passes the gradient of t * s unchanged to the
latent float weights. Biases stay float.

Outputs, written to --out (default: this script's folder):

    digits.onnx               opset 13, input `pixels` [1, 64] float32,
                              Gemm (transB=1) + Relu, output `logits` [1, 10].
                              Each Gemm weight row holds only {-s, 0, +s}.
    digits_test.npy           float32 [450, 64], held-out inputs in [0, 1]
    digits_test_labels.npy    int64 [450]
    digits_calibration.npy    float32 [200, 64], training inputs

Only numpy, scikit-learn and onnx are used. The seed is fixed, so two runs on
the same machine and library versions write byte-identical files.

    python examples/digits/train.py [--out DIR]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

LAYER_SIZES = (64, 64, 32, 10)
SEED = 0
EPOCHS = 80
BATCH_SIZE = 32
PEAK_LEARNING_RATE = 0.01
CALIBRATION_COUNT = 200
OPSET = 13
# onnx 1.8 introduced opset 13 together with IR version 7. Without this,
# make_model stamps the newest IR version of the installed onnx, which older
# onnxruntime releases reject.
IR_VERSION = 7

# Keeps the scale of an all-zero row positive so W / s stays finite.
MIN_SCALE = 1e-8


# ---------------------------------------------------------------- ternarize

def ternarize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split weight [out, in] into trits [out, in] int8 and scales [out] float32.

    The method is absmean per output channel, s = mean|W_row| and
    t = clip(round(W / s), -1, 1).
    """
    scale = np.maximum(np.abs(weight).mean(axis=1), MIN_SCALE).astype(np.float32)
    trits = np.clip(np.round(weight / scale[:, None]), -1, 1).astype(np.int8)
    return trits, scale


def ternary_weight(weight: np.ndarray) -> np.ndarray:
    """Return t * s as float32 [out, in], so every row contains only -s, 0 and +s."""
    trits, scale = ternarize(weight)
    return trits.astype(np.float32) * scale[:, None]


# --------------------------------------------------------------------- data

@dataclass
class DigitsSplit:
    x_train: np.ndarray  # float32 [N_train, 64], pixel / 16
    y_train: np.ndarray  # int64 [N_train]
    x_test: np.ndarray  # float32 [450, 64]
    y_test: np.ndarray  # int64 [450]


def load_split() -> DigitsSplit:
    """Load the 1797 digits and hold out a stratified 25% for testing."""
    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)

    x_train, x_test, y_train, y_test = train_test_split(
        pixels, labels, test_size=0.25, random_state=0, stratify=labels
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


# ------------------------------------------------------------------ network

@dataclass
class Dense:
    weight: np.ndarray  # float32 [out, in], latent weights that training updates
    bias: np.ndarray  # float32 [out]


def init_layers(rng: np.random.Generator) -> list[Dense]:
    """Draw He-normal latent weights and zero biases for LAYER_SIZES."""
    layers = []
    for fan_in, fan_out in zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]):
        weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_out, fan_in))
        layers.append(Dense(weight.astype(np.float32), np.zeros(fan_out, np.float32)))
    return layers


def forward(
    layers: list[Dense], x: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Run the ternarized network on x [N, 64] and return logits [N, 10].

    Also returns each layer's input and ternary weight, which backward needs.
    """
    inputs = []
    weights = []
    activation = x
    for index, layer in enumerate(layers):
        weight = ternary_weight(layer.weight)
        inputs.append(activation)
        weights.append(weight)

        activation = activation @ weight.T + layer.bias
        if index < len(layers) - 1:
            activation = np.maximum(activation, 0.0)
    return activation, inputs, weights


def cross_entropy_gradient(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return d(mean softmax cross-entropy) / d logits, shape [N, 10]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    probabilities[np.arange(len(labels)), labels] -= 1.0
    return probabilities / len(labels)


def backward(
    layers: list[Dense],
    inputs: list[np.ndarray],
    weights: list[np.ndarray],
    grad_logits: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return (grad weight, grad bias) per layer.

    The straight-through estimator uses the gradient with respect to t * s
    as the gradient of the latent weight, as if ternarization were the identity.
    """
    grads = [None] * len(layers)
    grad_output = grad_logits
    for index in reversed(range(len(layers))):
        grads[index] = (grad_output.T @ inputs[index], grad_output.sum(axis=0))
        if index == 0:
            break

        grad_output = grad_output @ weights[index]
        # inputs[index] is the ReLU output of the layer below, so zeros mark
        # the units whose gradient ReLU blocks.
        grad_output = grad_output * (inputs[index] > 0.0)
    return grads


# ----------------------------------------------------------------- training

class Adam:
    """Adam (Kingma and Ba, 2015) over a flat list of float32 arrays."""

    def __init__(self, parameters: list[np.ndarray], beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.parameters = parameters
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.first_moments = [np.zeros_like(p) for p in parameters]
        self.second_moments = [np.zeros_like(p) for p in parameters]
        self.step_count = 0

    def step(self, grads: list[np.ndarray], learning_rate: float) -> None:
        """Update the parameters in place."""
        self.step_count += 1
        bias_correction1 = 1.0 - self.beta1**self.step_count
        bias_correction2 = 1.0 - self.beta2**self.step_count
        for parameter, grad, m, v in zip(
            self.parameters, grads, self.first_moments, self.second_moments
        ):
            m *= self.beta1
            m += (1.0 - self.beta1) * grad
            v *= self.beta2
            v += (1.0 - self.beta2) * grad * grad
            m_hat = m / bias_correction1
            v_hat = v / bias_correction2
            parameter -= (learning_rate * m_hat / (np.sqrt(v_hat) + self.epsilon)).astype(
                np.float32
            )


def train(split: DigitsSplit, epochs: int = EPOCHS, seed: int = SEED) -> list[Dense]:
    """Train the ternary MLP with Adam and return the latent float layers.

    The learning rate follows a cosine decay from PEAK_LEARNING_RATE to 0.
    Small final steps keep latent weights near a rounding threshold from
    flipping their trit in the last updates.
    """
    rng = np.random.default_rng(seed)
    layers = init_layers(rng)
    parameters = [array for layer in layers for array in (layer.weight, layer.bias)]
    optimizer = Adam(parameters)

    sample_count = len(split.x_train)
    steps_per_epoch = -(-sample_count // BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    for epoch in range(epochs):
        order = rng.permutation(sample_count)
        for start in range(0, sample_count, BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            logits, inputs, weights = forward(layers, split.x_train[batch])
            grad_logits = cross_entropy_gradient(logits, split.y_train[batch])
            grads = backward(layers, inputs, weights, grad_logits)

            progress = optimizer.step_count / total_steps
            learning_rate = PEAK_LEARNING_RATE * 0.5 * (1.0 + float(np.cos(np.pi * progress)))
            optimizer.step([g for pair in grads for g in pair], learning_rate)
    return layers


def accuracy(layers: list[Dense], x: np.ndarray, labels: np.ndarray) -> float:
    """Return the top-1 accuracy of the ternarized network."""
    logits, _, _ = forward(layers, x)
    return float(np.mean(logits.argmax(axis=1) == labels))


# ------------------------------------------------------------------- export

def build_onnx(layers: list[Dense]) -> onnx.ModelProto:
    """Build the ONNX model, one Gemm (transB=1) per layer with Relu between them.

    Gemm weights are t * s in float32, so an importer recovers trits and
    scales exactly from each row's distinct values.
    """
    nodes = []
    initializers = []
    tensor_name = "pixels"
    for index, layer in enumerate(layers):
        prefix = f"dense{index}"
        initializers.append(numpy_helper.from_array(ternary_weight(layer.weight), f"{prefix}.weight"))
        initializers.append(numpy_helper.from_array(layer.bias.astype(np.float32), f"{prefix}.bias"))

        is_last = index == len(layers) - 1
        gemm_output = "logits" if is_last else f"{prefix}.gemm"
        nodes.append(
            helper.make_node(
                "Gemm",
                [tensor_name, f"{prefix}.weight", f"{prefix}.bias"],
                [gemm_output],
                name=f"{prefix}_gemm",
                transB=1,
            )
        )
        tensor_name = gemm_output
        if not is_last:
            tensor_name = f"{prefix}.relu"
            nodes.append(helper.make_node("Relu", [gemm_output], [tensor_name], name=f"{prefix}_relu"))

    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, LAYER_SIZES[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, LAYER_SIZES[-1]])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="bonsai-mcu examples/digits/train.py",
        doc_string=(
            "Generated by examples/digits/train.py; retrain instead of editing. "
            "Ternary MLP for sklearn 8x8 digits, input pixel/16."
        ),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_outputs(layers: list[Dense], split: DigitsSplit, out_dir: Path) -> None:
    """Write digits.onnx and the test, label and calibration arrays to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "digits.onnx").write_bytes(build_onnx(layers).SerializeToString())

    # train_test_split already shuffled the training rows, so the first ones
    # are a random sample of them.
    calibration = split.x_train[:CALIBRATION_COUNT]
    np.save(out_dir / "digits_test.npy", split.x_test, allow_pickle=False)
    np.save(out_dir / "digits_test_labels.npy", split.y_test, allow_pickle=False)
    np.save(out_dir / "digits_calibration.npy", calibration, allow_pickle=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder for digits.onnx and the .npy files (default: this script's folder)",
    )
    args = parser.parse_args()

    split = load_split()
    layers = train(split)
    print(f"train accuracy (ternary weights): {accuracy(layers, split.x_train, split.y_train):.4f}")
    print(f"test accuracy (ternary weights):  {accuracy(layers, split.x_test, split.y_test):.4f}")

    write_outputs(layers, split, args.out)
    print(f"wrote digits.onnx and .npy files to {args.out}")


if __name__ == "__main__":
    main()
