"""bonsai_mcu.train: ternary layers, activation fake quantization, export, and the digits CNN example.

Tests that need PyTorch, or arm-none-eabi-gcc and QEMU, skip when they are
missing, except under CI (the CI environment variable set), where `make test`
installs them and the tests must run.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bonsai_mcu import BonsaiError
from bonsai_mcu.ir import QParams
from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.quantize import qparams_from_range, ternarize
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import build_simulator, quantize_inputs, reference_outputs, run_simulator

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn"
INSTALL = "install it with: pip install -e '.[train]'"


@pytest.fixture(scope="module")
def torch():
    """The torch module; skips the test without it, or fails it when CI is set."""
    try:
        import torch as module
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but PyTorch is not installed; {INSTALL}")
        pytest.skip(f"PyTorch is not installed; {INSTALL}")
    module.set_num_threads(1)
    return module


@pytest.fixture(scope="module")
def train(torch):
    import bonsai_mcu.train as module

    return module


def example_module(name: str):
    """Import a script of examples/digits_cnn as a module."""
    spec = importlib.util.spec_from_file_location(f"digits_cnn_{name}", EXAMPLE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bonsai_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name.startswith("bonsai_mcu")]



@pytest.fixture(autouse=True)
def propagate_bonsai_logs(monkeypatch):
    """Let caplog see bonsai_mcu records: the command-line interface turns their propagation off."""
    monkeypatch.setattr(logging.getLogger("bonsai_mcu"), "propagate", True)


# ===== weights =====


@pytest.mark.parametrize("granularity, group_size", [("per-channel", 128), ("per-tensor", 128), ("group", 8)])
def test_ternarize_matches_quantize_stage(torch, train, granularity, group_size):
    weights = torch.randn(6, 20, dtype=torch.float64)
    trits, scales = train.ternarize_weight(weights, granularity, group_size)

    expected_trits, expected_scales, _, _ = ternarize(weights.numpy(), "absmean", granularity, group_size)
    np.testing.assert_array_equal(trits.numpy().astype(np.int8), expected_trits)
    np.testing.assert_allclose(scales.numpy(), expected_scales, rtol=1e-12)


def test_conv_groups_run_channels_last(torch, train):
    """Scale groups of a Conv2d run over [kernel_h, kernel_w, in_channels], the order of the C."""
    weights = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    trits, scales = train.ternarize_weight(weights, "group", 4)

    rows = weights.numpy().transpose(0, 2, 3, 1).reshape(4, -1)
    expected_trits, expected_scales, _, _ = ternarize(rows, "absmean", "group", 4)
    np.testing.assert_array_equal(trits.numpy().transpose(0, 2, 3, 1).reshape(4, -1), expected_trits)
    np.testing.assert_allclose(scales.numpy(), expected_scales, rtol=1e-12)


def test_ternary_values_hold_three_levels(torch, train):
    layer = train.TernaryConv1d(3, 5, 4, granularity="group", group_size=5)
    values = layer.ternary_weight()
    rows = values.movedim(1, -1).reshape(5, -1)
    for row in rows:
        for group in row.split(5):
            magnitudes = group[group != 0].abs().unique()
            assert magnitudes.numel() <= 1


def test_straight_through_gradient(torch, train):
    layer = train.TernaryLinear(4, 3, bias=False)
    x = torch.randn(5, 4)
    layer(x).sum().backward()
    # d(sum(x @ (t * s).T)) / dW passes unchanged to the latent weights: every row gets sum(x).
    np.testing.assert_allclose(layer.weight.grad.numpy(), x.sum(dim=0).expand(3, 4).numpy(), rtol=1e-6)


def test_convert_replaces_layers_in_place(torch, train):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3),
                                torch.nn.Conv1d(1, 1, 1))
    reference = copy.deepcopy(model)
    returned = train.convert_to_ternary(model, keep=["3"])

    assert returned is model
    assert isinstance(model[0], train.TernaryConv2d)
    assert isinstance(model[2], train.TernaryLinear)
    assert type(model[3]) is torch.nn.Conv1d
    assert torch.equal(model[0].weight, reference[0].weight)
    assert torch.equal(model[2].bias, reference[2].bias)


def test_convert_rejects_unknown_keep(torch, train):
    with pytest.raises(ValueError, match="no module named classifier"):
        train.convert_to_ternary(torch.nn.Sequential(torch.nn.Linear(2, 2)), keep=["classifier"])


# ===== activations =====


def test_fake_quantize_matches_c_rounding(torch, train):
    from bonsai_mcu.train.activations import fake_quantize

    qparams = QParams(0.25, -3)
    # Exact .5 ties on both sides of zero, and values past both ends of the int8 range.
    values = np.concatenate([(np.arange(-20, 20) + 0.5) * 0.25, [-40.0, -31.0, 32.0, 40.0], [0.1, -0.1]])
    result = fake_quantize(torch.tensor(values), qparams.scale, qparams.zero_point).numpy()
    codes = np.round(result / qparams.scale).astype(np.int64) + qparams.zero_point

    np.testing.assert_array_equal(codes, qparams.quantize(values))


def test_fake_quantize_gradient_stops_outside_range(torch, train):
    from bonsai_mcu.train.activations import fake_quantize

    x = torch.tensor([-40.0, 0.3, 40.0], requires_grad=True)
    fake_quantize(x, 0.25, -3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 0.0])


def test_quantizer_parameters_follow_quantize_stage(torch, train):
    quantizer = train.ActivationQuantizer()
    quantizer.train()
    quantizer(torch.tensor([-0.7, 2.9, 1.0]))
    scale, zero_point = quantizer.qparams()

    expected = qparams_from_range(-0.7, 2.9)
    assert scale == pytest.approx(expected.scale, rel=1e-7)
    assert scale == float(np.float32(scale))
    assert zero_point == expected.zero_point


def test_quantization_points(torch, train):
    """Quantizers sit after fused activations, after Add and table ops, and on the input; not after pools."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.norm = nn.BatchNorm2d(2)
            self.pool = nn.MaxPool2d(2)
            self.other = nn.Conv2d(2, 2, 1)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            y = torch.relu(self.norm(self.conv(x)))
            z = self.other(y)
            s = torch.sigmoid(y + z)
            return self.head(torch.flatten(self.pool(s), 1))

    traced = train.quantize_activations(Block())
    quantized = [node.args[0].name for node in traced.graph.nodes
                 if node.op == "call_module" and node.target.startswith("activation_quantizer")]
    assert quantized == ["x", "relu", "other", "add", "sigmoid", "head"]


def test_calibrate_uses_min_and_max(torch, train):
    model = train.quantize_activations(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    train.calibrate_activations(model, [torch.tensor([[-1.0, 0.5]]), torch.tensor([[3.0, 0.0]])])
    input_quantizer = model.activation_quantizer_0
    assert (float(input_quantizer.low), float(input_quantizer.high)) == (-1.0, 3.0)
    assert not model.training


# ===== export =====


def small_cnn(torch, train, granularity: str, group_size: int):
    """Conv-BatchNorm-ReLU, Conv-ReLU, MaxPool, Linear on [1, 2, 6, 6], ternary, with quantizers."""
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 5),
    )
    train.convert_to_ternary(model, granularity, group_size)
    return train.quantize_activations(model)


def fit_briefly(torch, model, x, labels, steps: int = 15) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
    model.eval()


def ternarize_layer(layer) -> tuple[np.ndarray, np.ndarray]:
    """Return a layer's trits as rows in the C's order, and its scales."""
    from bonsai_mcu.train.layers import ternarize_weight, weight_rows

    trits, scales = ternarize_weight(layer.weight.detach().double(), layer.granularity, layer.group_size)
    return weight_rows(trits).numpy().astype(np.int8), scales.numpy()


@pytest.mark.parametrize("granularity, group_size", [("per-channel", 128), ("group", 16), ("per-tensor", 128)])
def test_export_imports_without_loss(tmp_path, caplog, torch, train, granularity, group_size):
    torch.manual_seed(0)
    model = small_cnn(torch, train, granularity, group_size)
    x = torch.randn(32, 2, 6, 6)
    fit_briefly(torch, model, x, torch.randint(0, 5, (32,)))
    path = train.export_onnx(model, x[:1], tmp_path / "cnn.onnx", input_names=["image"], output_names=["scores"])

    with caplog.at_level(logging.INFO, logger="bonsai_mcu"):
        compiled = compile_model(path, load_target("host"), name="cnn")
    graph = compiled.graph
    assert bonsai_warnings(caplog) == []
    assert any("calibration data is not needed" in record.getMessage() for record in caplog.records)

    weighted = [node for node in graph.nodes if node.op in ("Conv", "Dense")]
    layers = [module for module in model.modules() if isinstance(module, (train.TernaryConv2d, train.TernaryLinear))]
    assert len(weighted) == len(layers) == 3
    for node, layer in zip(weighted, layers):
        assert node.quant["method"] == "exact", node.name
        assert node.quant["weight_error"] == 0.0, node.name
        expected_trits, _ = ternarize_layer(layer)
        # BatchNorm folding scales whole output channels, which changes no trit.
        np.testing.assert_array_equal(node.quant["values"], expected_trits)

    quantizers = [module for module in model.modules() if isinstance(module, train.ActivationQuantizer)]
    scale, zero_point = quantizers[0].qparams()
    input_qparams = graph.tensors[graph.inputs[0]].qparams
    assert (input_qparams.scale, input_qparams.zero_point) == (pytest.approx(scale, rel=1e-7), zero_point)
    scale, zero_point = quantizers[-1].qparams()
    output_qparams = graph.tensors[graph.outputs[0]].qparams
    assert (output_qparams.scale, output_qparams.zero_point) == (pytest.approx(scale, rel=1e-7), zero_point)

    # The int8 reference computes what the fake-quantized model computes, up to float rounding.
    samples = [[x[i:i + 1].double().numpy()] for i in range(8)]
    outputs = reference_outputs(graph, quantize_inputs(graph, samples))
    with torch.no_grad():
        expected = model(x[:8]).numpy()
    ours = np.stack([output_qparams.dequantize(row[0]) for row in outputs])
    codes_apart = np.abs(ours - expected) / output_qparams.scale
    assert np.mean(codes_apart < 0.5) >= 0.95
    assert codes_apart.max() <= 2


def test_export_conv1d_model(tmp_path, caplog, torch, train):
    nn = torch.nn
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(8, 6, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 20, 4))
    model = train.quantize_activations(train.convert_to_ternary(model, "group", 16))
    x = torch.randn(16, 8, 20)
    fit_briefly(torch, model, x, torch.randint(0, 4, (16,)), steps=5)
    path = train.export_onnx(model, x[:1], tmp_path / "conv1d.onnx")

    with caplog.at_level(logging.WARNING, logger="bonsai_mcu"):
        compiled = compile_model(path, load_target("host"))
    assert bonsai_warnings(caplog) == []
    conv = compiled.graph.nodes[0]
    assert conv.op == "Conv"
    assert (conv.quant["method"], conv.quant["granularity"], conv.quant["group_size"]) == ("exact", "group", 16)
    np.testing.assert_array_equal(conv.quant["values"], ternarize_layer(model.get_submodule("0"))[0])


def test_export_needs_observed_ranges(tmp_path, torch, train):
    model = train.quantize_activations(train.convert_to_ternary(torch.nn.Sequential(torch.nn.Linear(4, 2))))
    with pytest.raises(ValueError, match="no range yet"):
        train.export_onnx(model, torch.randn(1, 4), tmp_path / "model.onnx")


def test_export_needs_batch_one(tmp_path, torch, train):
    model = train.convert_to_ternary(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="batch size 1"):
        train.export_onnx(model, torch.randn(3, 4), tmp_path / "model.onnx")


# ===== the digits CNN example =====


def test_digits_cnn_example_trains(tmp_path, torch, train):
    """A few epochs of examples/digits_cnn/train.py give a model the C and torch agree on."""
    script = example_module("train")
    torch.manual_seed(0)
    split = script.load_split()
    model = script.DigitsCNN()
    script.train(model, split, epochs=2, learning_rate=script.FLOAT_LEARNING_RATE)
    model = train.quantize_activations(train.convert_to_ternary(model))
    script.train(model, split, epochs=2, learning_rate=script.TERNARY_LEARNING_RATE)
    torch_accuracy = script.accuracy(model, split.x_test, split.y_test)
    path = train.export_onnx(model, split.x_test[:1], tmp_path / "digits_cnn.onnx")

    compiled = compile_model(path, load_target("host"))
    graph = compiled.graph
    samples = [[image[None].double().numpy()] for image in split.x_test[:100]]
    outputs = reference_outputs(graph, quantize_inputs(graph, samples))
    predictions = np.array([row[0].argmax() for row in outputs])
    with torch.no_grad():
        expected = model(split.x_test[:100]).argmax(dim=1).numpy()
    assert torch_accuracy >= 0.85
    assert np.mean(predictions == expected) >= 0.97


def test_digits_cnn_committed_model(tmp_path, caplog):
    """examples/digits_cnn/digits_cnn.onnx: exact trits, no calibration, >= 97% held-out, host C equal."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: pip install -e '.[test]'")
    check = example_module("check")
    images, labels = check.held_out_digits()
    samples = [[image[None].astype(np.float64)] for image in images]

    with caplog.at_level(logging.WARNING, logger="bonsai_mcu"):
        compiled = compile_model(EXAMPLE_DIR / "digits_cnn.onnx", load_target("host"), name="digits_cnn")
    graph = compiled.graph
    assert bonsai_warnings(caplog) == []
    for node in graph.nodes:
        if node.op in ("Conv", "Dense"):
            assert (node.quant["format"], node.quant["method"]) == ("ternary", "exact"), node.name

    inputs = quantize_inputs(graph, samples)
    expected = reference_outputs(graph, inputs)
    accuracy = float(np.mean(check.predictions(expected) == labels))
    assert accuracy >= 0.97

    actual = run_simulator(build_simulator(compiled.files, graph, tmp_path), graph, inputs)
    for index, (want, got) in enumerate(zip(expected, actual)):
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"held-out sample {index}")


def test_digits_cnn_committed_model_cortex_m4():
    """The generated C of digits_cnn.onnx under QEMU (Cortex-M4) equals the reference on all 450 digits."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: pip install -e '.[test]'")
    from bonsai_mcu import emulate

    try:
        emulate.require_toolchain("cortex-m4", emulator=True)
    except BonsaiError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so a missing tool fails: {error}")
        pytest.skip(str(error))
    check = example_module("check")
    images, _ = check.held_out_digits()
    samples = [[image[None].astype(np.float64)] for image in images]
    assert check.check_cortex_m4(EXAMPLE_DIR / "digits_cnn.onnx", samples) == len(samples)
