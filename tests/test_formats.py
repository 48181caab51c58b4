"""Import of quantized formats: MatMulNBits, QDQ pairs, QONNX quantizers, and --keep-int8."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bonsai_mcu import BonsaiError
from bonsai_mcu.cli import main
from bonsai_mcu.formats import pack_codes, unpack_codes
from bonsai_mcu.importer import UnsupportedModelError, import_onnx
from bonsai_mcu.pack import unpack_trits
from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.quantize import QuantOptions, qparams_from_range
from bonsai_mcu.reference import run_float
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import build_simulator, quantize_inputs, reference_outputs, run_simulator

QONNX_DOMAIN = "qonnx.custom_op.general"


def build_model(nodes, inputs, outputs, initializers=(), domains=(), opset: int = 13) -> onnx.ModelProto:
    """Build and check a model; inputs and outputs are (name, shape) pairs, domains extra opset domains."""
    graph = helper.make_graph(
        list(nodes), "formats",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        [numpy_helper.from_array(np.asarray(array), name) for name, array in initializers],
    )
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(domain, 1) for domain in domains]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, folder: Path, name: str = "model") -> Path:
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def warnings_of(caplog) -> list[str]:
    """Return the warnings bonsai-mcu logged (onnxruntime's quantizer logs its own on the root logger)."""
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name.startswith("bonsai_mcu")]


def weighted_nodes(graph):
    return [node for node in graph.nodes if node.op in ("Conv", "Dense")]


def host_matches_reference(compiled, samples, folder: Path) -> bool:
    graph = compiled.graph
    inputs = quantize_inputs(graph, samples)
    expected = reference_outputs(graph, inputs)
    actual = run_simulator(build_simulator(compiled.files, graph, folder), graph, inputs)
    return all(np.array_equal(a, b) for want, got in zip(expected, actual) for a, b in zip(want, got))


def c_weight_bytes(files: dict[str, str], symbol: str) -> np.ndarray:
    """Parse the initializer of one weight array out of the generated C."""
    text = "\n".join(files.values())
    match = re.search(rf"{symbol}\[\d*\][^=]*=\s*\{{([^}}]*)\}}", text)
    assert match, f"{symbol} not found in the generated C"
    return np.array([int(item) for item in match.group(1).replace("\n", " ").split(",") if item.strip()])



@pytest.fixture(autouse=True)
def propagate_bonsai_logs(monkeypatch):
    """Let caplog see bonsai_mcu records: the command-line interface turns their propagation off."""
    monkeypatch.setattr(logging.getLogger("bonsai_mcu"), "propagate", True)


# ===== MatMulNBits =====


def matmul_nbits_model(codes: np.ndarray, scales: np.ndarray, block_size: int, bits: int = 2,
                       zero_points: np.ndarray | None = None, bias: np.ndarray | None = None) -> onnx.ModelProto:
    """y = x @ ((codes - zero_point) * scale).T + bias for codes [N, K]; scales, zero_points [N, blocks]."""
    out_features, depth = codes.shape
    blocks = -(-depth // block_size)
    padded = np.zeros((out_features, blocks * block_size), dtype=np.uint8)
    padded[:, :depth] = codes
    packed = pack_codes(padded.reshape(out_features, blocks, block_size), bits)
    initializers = [("B", packed), ("scales", scales.astype(np.float32))]
    inputs = ["x", "B", "scales"]
    if zero_points is not None:
        initializers.append(("zero_points", zero_points))
        inputs.append("zero_points")
    if bias is not None:
        inputs += [""] * (5 - len(inputs)) + ["bias"]
        initializers.append(("bias", bias.astype(np.float32)))
    node = helper.make_node("MatMulNBits", inputs, ["y"], name="projection", domain="com.microsoft",
                            K=depth, N=out_features, bits=bits, block_size=block_size)
    return build_model([node], [("x", [1, depth])], [("y", [1, out_features])], initializers,
                       domains=["com.microsoft"])


def ternary_codes(rng, out_features: int, depth: int, zero_point: int = 2) -> np.ndarray:
    return (rng.integers(-1, 2, size=(out_features, depth)) + zero_point).astype(np.uint8)


def test_unpack_codes_low_bits_first():
    packed = np.array([[0b11_10_01_00, 0b00_00_00_11]], dtype=np.uint8)
    np.testing.assert_array_equal(unpack_codes(packed, 2, 5), [[0, 1, 2, 3, 3]])
    np.testing.assert_array_equal(pack_codes(np.array([[0, 1, 2, 3, 3]], dtype=np.uint8), 2), packed)


def test_matmul_nbits_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e '.[test]'")
    rng = np.random.default_rng(0)
    depth, out_features, block_size = 300, 12, 128
    codes = ternary_codes(rng, out_features, depth)
    scales = rng.uniform(0.05, 0.5, size=(out_features, 3))
    bias = rng.standard_normal(out_features)
    path = save(matmul_nbits_model(codes, scales, block_size, bias=bias), tmp_path)

    graph = import_onnx(path)
    inputs = rng.standard_normal((4, 1, depth)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in inputs:
        expected = session.run(None, {"x": x})[0]
        actual = run_float(graph, [x.astype(np.float64)])[graph.outputs[0]]
        np.testing.assert_allclose(actual.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_matmul_nbits_codes_reach_c(tmp_path):
    rng = np.random.default_rng(1)
    depth, out_features, block_size = 300, 12, 128
    codes = ternary_codes(rng, out_features, depth)
    scales = rng.uniform(0.05, 0.5, size=(out_features, 3))
    path = save(matmul_nbits_model(codes, scales, block_size), tmp_path)

    compiled = compile_model(path, load_target("host"), name="nbits")
    node = compiled.graph.nodes[0]
    expected_trits = codes.astype(np.int8) - 2
    assert node.quant["method"] == "exact"
    assert node.quant["granularity"] == "group"
    assert node.quant["group_size"] == block_size
    assert node.quant["weight_error"] == 0.0
    np.testing.assert_array_equal(node.quant["values"], expected_trits)
    np.testing.assert_allclose(node.quant["scales"], scales.astype(np.float32))

    stored = c_weight_bytes(compiled.files, "nbits_layer0_weights")
    np.testing.assert_array_equal(unpack_trits(stored, expected_trits.size), expected_trits.reshape(-1))
    samples = [[rng.standard_normal((1, depth))] for _ in range(3)]
    assert host_matches_reference(compiled, samples, tmp_path / "build")


def test_matmul_nbits_packed_zero_points(tmp_path):
    rng = np.random.default_rng(2)
    depth, out_features, block_size = 64, 4, 32
    zero_points = np.array([[1, 2], [2, 1], [1, 1], [2, 2]], dtype=np.uint8)
    levels = rng.integers(-1, 2, size=(out_features, depth))
    codes = (levels + np.repeat(zero_points, block_size, axis=1)).astype(np.uint8)
    scales = rng.uniform(0.1, 1.0, size=(out_features, 2))
    packed_zero_points = pack_codes(zero_points, 2)
    path = save(matmul_nbits_model(codes, scales, block_size, zero_points=packed_zero_points), tmp_path)

    graph = import_onnx(path)
    expected = levels * np.repeat(scales.astype(np.float32), block_size, axis=1)
    np.testing.assert_allclose(graph.nodes[0].weights, expected)


def test_matmul_nbits_four_bit_ternary_codes(tmp_path):
    rng = np.random.default_rng(3)
    codes = ternary_codes(rng, 8, 64, zero_point=8)
    scales = rng.uniform(0.1, 1.0, size=(8, 4))
    path = save(matmul_nbits_model(codes, scales, 16, bits=4), tmp_path)

    compiled = compile_model(path, load_target("host"))
    node = compiled.graph.nodes[0]
    assert node.quant["method"] == "exact"
    np.testing.assert_array_equal(node.quant["values"], codes.astype(np.int8) - 8)


def test_matmul_nbits_rejects_non_ternary(tmp_path):
    rng = np.random.default_rng(4)
    codes = ternary_codes(rng, 6, 128)
    codes[2, 5] = 0
    path = save(matmul_nbits_model(codes, np.ones((6, 1)), 128), tmp_path)

    with pytest.raises(UnsupportedModelError) as raised:
        import_onnx(path)
    message = str(raised.value)
    assert "MatMulNBits node 'projection'" in message
    assert "not ternary" in message
    assert "the values -2 in 1 of 6 rows" in message


def test_matmul_nbits_rejects_three_bits(tmp_path):
    node = helper.make_node("MatMulNBits", ["x", "B", "scales"], ["y"], name="odd", domain="com.microsoft",
                            K=16, N=2, bits=3, block_size=16)
    model = build_model([node], [("x", [1, 16])], [("y", [1, 2])],
                        [("B", np.zeros((2, 1, 6), np.uint8)), ("scales", np.ones((2, 1), np.float32))],
                        domains=["com.microsoft"])
    with pytest.raises(UnsupportedModelError, match="bits=3"):
        import_onnx(save(model, tmp_path))


# ===== QDQ =====


def qdq(name: str, output: str, scale: float, zero_point, prefix: str) -> tuple[list, list]:
    """QuantizeLinear -> DequantizeLinear nodes from `name` to `output`, and their initializers."""
    nodes = [
        helper.make_node("QuantizeLinear", [name, f"{prefix}_scale", f"{prefix}_zero_point"], [f"{prefix}_q"],
                         name=f"{prefix}_quantize"),
        helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero_point"], [output],
                         name=f"{prefix}_dequantize"),
    ]
    return nodes, [(f"{prefix}_scale", np.float32(scale)), (f"{prefix}_zero_point", zero_point)]


def hand_qdq_model() -> onnx.ModelProto:
    """x (uint8 QDQ) -> Conv -> QDQ -> Relu -> QDQ -> Flatten -> Gemm -> QDQ -> y."""
    rng = np.random.default_rng(5)
    nodes, initializers = [], []
    for parts in (qdq("x", "x_dq", 0.02, np.uint8(100), "input"),):
        nodes += parts[0]
        initializers += parts[1]
    nodes.append(helper.make_node("Conv", ["x_dq", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]))
    initializers += [("conv_w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
                     ("conv_b", rng.standard_normal(4).astype(np.float32))]
    for source, output, scale, zero_point, prefix in (("conv", "conv_dq", 0.1, np.int8(3), "conv_out"),
                                                      ("relu", "relu_dq", 0.05, np.int8(-128), "relu_out"),
                                                      ("gemm", "y", 0.2, np.int8(-7), "gemm_out")):
        if source == "relu":
            nodes.append(helper.make_node("Relu", ["conv_dq"], ["relu"], name="relu"))
        if source == "gemm":
            nodes.append(helper.make_node("Flatten", ["relu_dq"], ["flat"], name="flatten"))
            nodes.append(helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["gemm"], name="gemm", transB=1))
            initializers += [("gemm_w", rng.standard_normal((3, 4 * 5 * 5)).astype(np.float32)),
                             ("gemm_b", rng.standard_normal(3).astype(np.float32))]
        parts = qdq(source, output, scale, zero_point, prefix)
        nodes += parts[0]
        initializers += parts[1]
    return build_model(nodes, [("x", [1, 2, 5, 5])], [("y", [1, 3])], initializers)


def test_qdq_parameters_replace_calibration(tmp_path, caplog):
    path = save(hand_qdq_model(), tmp_path)

    with caplog.at_level(logging.INFO, logger="bonsai_mcu"):
        compiled = compile_model(path, load_target("host"))
    graph = compiled.graph
    conv, gemm = weighted_nodes(graph)
    assert warnings_of(caplog) == []
    assert any("calibration data is not needed" in record.getMessage() for record in caplog.records)
    assert [node.op for node in graph.nodes if node.op not in ("Reshape", "Transpose")] == ["Conv", "Dense"]

    input_qparams = graph.tensors[graph.inputs[0]].qparams
    assert input_qparams.scale == pytest.approx(0.02)
    assert input_qparams.zero_point == 100 - 128
    conv_out = graph.tensors[conv.outputs[0]].qparams
    assert (conv_out.scale, conv_out.zero_point) == (pytest.approx(0.05), -128)
    assert conv.attrs["activation"][:2] == ("clip", 0.0)
    output = graph.tensors[graph.outputs[0]].qparams
    assert (output.scale, output.zero_point) == (pytest.approx(0.2), -7)
    assert gemm.quant["input_zero_point"] == -128


def test_qdq_input_stays_channels_last(tmp_path):
    graph = import_onnx(save(hand_qdq_model(), tmp_path))
    assert graph.tensors[graph.inputs[0]].perm == (0, 2, 3, 1)
    assert graph.nodes[0].op == "Conv"


def test_qdq_calibration_file_not_used(tmp_path, caplog):
    path = save(hand_qdq_model(), tmp_path)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.full((4, 2, 5, 5), 50.0, dtype=np.float32))

    with caplog.at_level(logging.INFO, logger="bonsai_mcu"):
        compiled = compile_model(path, load_target("host"), calibration=calibration)
    assert compiled.graph.tensors[compiled.graph.inputs[0]].qparams.scale == pytest.approx(0.02)
    assert any("is not used" in record.getMessage() for record in caplog.records)


class _Reader:
    """A CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def float_cnn(rng) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Flatten", ["relu"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["y"], name="gemm", transB=1),
    ]
    initializers = [("conv_w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3),
                    ("conv_b", rng.standard_normal(4).astype(np.float32) * 0.1),
                    ("gemm_w", rng.standard_normal((3, 4 * 5 * 5)).astype(np.float32) * 0.1),
                    ("gemm_b", rng.standard_normal(3).astype(np.float32) * 0.1)]
    return build_model(nodes, [("x", [1, 2, 5, 5])], [("y", [1, 3])], initializers)


@pytest.mark.parametrize("activation_type", ["QInt8", "QUInt8"])
def test_onnxruntime_qdq_model(tmp_path, caplog, activation_type):
    quantization = pytest.importorskip("onnxruntime.quantization",
                                       reason="onnxruntime is not installed: pip install -e '.[test]'")
    import onnxruntime

    rng = np.random.default_rng(6)
    float_path = save(float_cnn(rng), tmp_path, "float")
    feeds = [{"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32)} for _ in range(16)]
    qdq_path = tmp_path / "qdq.onnx"
    quantization.quantize_static(
        str(float_path), str(qdq_path), _Reader(feeds), quant_format=quantization.QuantFormat.QDQ,
        activation_type=getattr(quantization.QuantType, activation_type),
        weight_type=quantization.QuantType.QInt8, per_channel=True)

    # Every weighted layer stays int8, so the only differences left to onnxruntime are roundings.
    options = QuantOptions(int8_layers={"first", "last"})
    with caplog.at_level(logging.INFO, logger="bonsai_mcu"):
        compiled = compile_model(qdq_path, load_target("host"), options=options)
    graph = compiled.graph
    assert warnings_of(caplog) == []
    assert [node.quant["format"] for node in weighted_nodes(graph)] == ["int8", "int8"]

    model = onnx.load(str(qdq_path))
    input_quantize = next(node for node in model.graph.node
                          if node.op_type == "QuantizeLinear" and node.input[0] == "x")
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    zero_point = int(constants[input_quantize.input[2]])
    input_qparams = graph.tensors[graph.inputs[0]].qparams
    assert input_qparams.scale == pytest.approx(float(constants[input_quantize.input[1]]))
    assert input_qparams.zero_point == (zero_point - 128 if activation_type == "QUInt8" else zero_point)

    session = onnxruntime.InferenceSession(str(qdq_path), providers=["CPUExecutionProvider"])
    output = graph.tensors[graph.outputs[0]]
    samples = [[feed["x"].astype(np.float64)] for feed in feeds[:8]]
    ours = reference_outputs(graph, quantize_inputs(graph, samples))
    for feed, row in zip(feeds, ours):
        expected = session.run(None, feed)[0].reshape(-1)
        np.testing.assert_allclose(output.qparams.dequantize(row[0]), expected, atol=3 * output.qparams.scale)
    assert host_matches_reference(compiled, samples, tmp_path / "build")


SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


def quantize_qdq(float_path: Path, qdq_path: Path, feeds: list[dict], per_channel: bool) -> None:
    """Quantize with onnxruntime's defaults: QDQ, uint8 activations, int8 weights, int32 biases."""
    quantization = pytest.importorskip("onnxruntime.quantization",
                                       reason="onnxruntime is not installed: pip install -e '.[test]'")
    quantization.quantize_static(str(float_path), str(qdq_path), _Reader(feeds),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel)


def verify_int8(model: Path, samples: Path) -> str:
    """Run `bonsai-mcu verify --weights int8` and return its output; fail on a non-zero exit."""
    result = CliRunner().invoke(main, ["verify", str(model), "--inputs", str(samples), "--weights", "int8"])
    assert result.exit_code == 0, result.output
    return result.output


def float_cosine(float_path: Path, compiled, samples: np.ndarray) -> float:
    """Cosine between the float model's outputs (onnxruntime) and the int8 reference's, over all samples."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = [1] + list(session.get_inputs()[0].shape[1:])
    graph = compiled.graph
    output = graph.tensors[graph.outputs[0]]
    batches = [[sample.reshape(shape).astype(np.float64)] for sample in samples]
    ours = np.concatenate([output.qparams.dequantize(row[0]).reshape(-1)
                           for row in reference_outputs(graph, quantize_inputs(graph, batches))])
    expected = np.concatenate([session.run(None, {name: sample.reshape(shape).astype(np.float32)})[0].reshape(-1)
                               for sample in samples])
    return float(ours @ expected / (np.linalg.norm(ours) * np.linalg.norm(expected)))


@pytest.mark.parametrize("per_channel", [False, True])
def test_onnxruntime_default_qdq_verifies(tmp_path, per_channel):
    """quantize_static's default output, with int32 biases of scale shape [1], verifies bit for bit."""
    rng = np.random.default_rng(12)
    float_path = save(float_cnn(rng), tmp_path, "float")
    samples = rng.standard_normal((16, 1, 2, 5, 5)).astype(np.float32)
    qdq_path = tmp_path / "qdq.onnx"
    quantize_qdq(float_path, qdq_path, [{"x": sample} for sample in samples], per_channel)
    samples_path = tmp_path / "samples.npy"
    np.save(samples_path, samples[:8].reshape(8, 2, 5, 5))

    output = verify_int8(qdq_path, samples_path)
    assert "host C vs reference: 8/8 samples bit-exact" in output
    cosine = float(re.search(r"cosine (\d\.\d+)", output).group(1))
    assert cosine > 0.99

    compiled = compile_model(qdq_path, load_target("host"), options=QuantOptions(weights="int8"))
    assert float_cosine(float_path, compiled, samples[:8]) > 0.99


def test_per_channel_qdq_below_opset_13_hint(tmp_path):
    """quantize_static writes per-axis DequantizeLinear into an opset 11 model, which ONNX rejects."""
    rng = np.random.default_rng(13)
    model = float_cnn(rng)
    model.opset_import[0].version = 11
    float_path = save(model, tmp_path, "float")
    qdq_path = tmp_path / "qdq.onnx"
    feeds = [{"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32)} for _ in range(4)]
    quantize_qdq(float_path, qdq_path, feeds, per_channel=True)
    with pytest.raises(BonsaiError, match="convert_version\\(model, 13\\) before quantizing"):
        import_onnx(qdq_path)


@pytest.mark.parametrize("model_file, samples_file", [
    ("kws_ref_model.onnx", "kws_sample.npy"),
    ("ad01_fp32.onnx", "ad01_samples.npy"),
])
def test_onnxruntime_qdq_shared_models(tmp_path, model_file, samples_file):
    float_path, samples_path = SHARED_MODELS / model_file, SHARED_MODELS / samples_file
    if not float_path.exists() or not samples_path.exists():
        pytest.skip(f"{float_path} or {samples_path} not found: the reference models sit in ../shared/models "
                    "beside the repository")
    model = onnx.load(str(float_path))
    name = model.graph.input[0].name
    shape = [1] + [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    samples = np.load(samples_path).astype(np.float32)
    qdq_path = tmp_path / "qdq.onnx"
    quantize_qdq(float_path, qdq_path, [{name: sample.reshape(shape)} for sample in samples], per_channel=False)

    output = verify_int8(qdq_path, samples_path)
    assert f"host C vs reference: {len(samples)}/{len(samples)} samples bit-exact" in output
    cosine = float(re.search(r"cosine (\d\.\d+)", output).group(1))
    assert cosine > 0.99

    compiled = compile_model(qdq_path, load_target("host"), options=QuantOptions(weights="int8"))
    assert float_cosine(float_path, compiled, samples) > 0.99


def test_qdq_keeps_shared_tensor_unfused(tmp_path):
    """A ReLU behind a QDQ pair must not fuse into a Conv whose output another op also reads."""
    rng = np.random.default_rng(11)
    nodes, initializers = qdq("conv", "conv_dq", 0.1, np.int8(0), "conv_out")
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="conv")] + nodes + [
        helper.make_node("Relu", ["conv_dq"], ["relu"], name="relu"),
        helper.make_node("Add", ["conv", "relu"], ["y"], name="add"),
    ]
    initializers.append(("w", rng.standard_normal((2, 2, 1, 1)).astype(np.float32)))
    model = build_model(nodes, [("x", [1, 2, 3, 3])], [("y", [1, 2, 3, 3])], initializers)

    graph = import_onnx(save(model, tmp_path))
    conv = graph.nodes[0]
    assert conv.op == "Conv"
    assert conv.attrs["activation"] is None
    assert "Clamp" in [node.op for node in graph.nodes]


def test_qdq_rejects_integer_consumer(tmp_path):
    nodes, initializers = qdq("x", "unused", 0.1, np.int8(0), "input")
    nodes.append(helper.make_node("Cast", ["input_q"], ["y"], name="cast", to=TensorProto.FLOAT))
    model = build_model(nodes, [("x", [1, 4])], [("y", [1, 4])], initializers)
    with pytest.raises(UnsupportedModelError, match="only QuantizeLinear -> DequantizeLinear pairs"):
        import_onnx(save(model, tmp_path))


def test_qdq_rejects_mismatched_pair(tmp_path):
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["q"], name="quantize"),
        helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["y"], name="dequantize"),
    ]
    initializers = [("s1", np.float32(0.1)), ("s2", np.float32(0.2)), ("z", np.int8(0))]
    model = build_model(nodes, [("x", [1, 4])], [("y", [1, 4])], initializers)
    with pytest.raises(UnsupportedModelError, match="DequantizeLinear node 'dequantize': scale 0.2"):
        import_onnx(save(model, tmp_path))


def test_qdq_rejects_per_axis_activation(tmp_path):
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quantize", axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dequantize", axis=1),
    ]
    initializers = [("s", np.full(4, 0.1, np.float32)), ("z", np.zeros(4, np.int8))]
    model = build_model(nodes, [("x", [1, 4])], [("y", [1, 4])], initializers)
    with pytest.raises(UnsupportedModelError, match="per-axis scale of 4 values"):
        import_onnx(save(model, tmp_path))


def test_partial_qdq_calibrates_the_rest(tmp_path, caplog):
    """Only the input carries a QDQ pair: the Gemm output is calibrated from samples."""
    rng = np.random.default_rng(7)
    nodes, initializers = qdq("x", "x_dq", 0.05, np.int8(0), "input")
    nodes.append(helper.make_node("Gemm", ["x_dq", "w"], ["y"], name="gemm", transB=1))
    initializers.append(("w", rng.standard_normal((3, 4)).astype(np.float32)))
    path = save(build_model(nodes, [("x", [1, 4])], [("y", [1, 3])], initializers), tmp_path)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, rng.standard_normal((8, 4)).astype(np.float32))

    with caplog.at_level(logging.INFO, logger="bonsai_mcu"):
        compiled = compile_model(path, load_target("host"), calibration=calibration)
    graph = compiled.graph
    assert graph.tensors[graph.inputs[0]].qparams.scale == pytest.approx(0.05)
    assert any("1 are calibrated" in record.getMessage() for record in caplog.records)
    assert warnings_of(caplog) == []


# ===== QONNX =====


def qonnx_model(weight_bits: int = 2, activation_bits: int = 8) -> tuple[onnx.ModelProto, dict]:
    """Brevitas-style graph: Quant on the input, ternary Conv weights, Quant after Relu, binary Gemm weights."""
    rng = np.random.default_rng(8)
    conv_scale = rng.uniform(0.1, 0.3, size=(4, 1, 1, 1)).astype(np.float32)
    gemm_scale = np.float32(0.25)
    latent_conv = rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3
    latent_gemm = rng.standard_normal((3, 4 * 5 * 5)).astype(np.float32)
    nodes = [
        helper.make_node("Quant", ["x", "in_scale", "in_zero", "act_bits"], ["x_q"], name="input_quant",
                         domain=QONNX_DOMAIN, signed=1, narrow=0, rounding_mode="ROUND"),
        helper.make_node("Quant", ["conv_latent", "conv_scale", "zero", "weight_bits"], ["conv_w"],
                         name="conv_weight_quant", domain=QONNX_DOMAIN, signed=1, narrow=1, rounding_mode="ROUND"),
        helper.make_node("Conv", ["x_q", "conv_w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Quant", ["relu", "relu_scale", "zero", "act_bits"], ["relu_q"], name="relu_quant",
                         domain=QONNX_DOMAIN, signed=0, narrow=0, rounding_mode="ROUND"),
        helper.make_node("Flatten", ["relu_q"], ["flat"], name="flatten"),
        helper.make_node("BipolarQuant", ["gemm_latent", "gemm_scale"], ["gemm_w"], name="gemm_weight_quant",
                         domain=QONNX_DOMAIN),
        helper.make_node("Gemm", ["flat", "gemm_w"], ["gemm"], name="gemm", transB=1),
        helper.make_node("Quant", ["gemm", "out_scale", "zero", "act_bits"], ["y"], name="output_quant",
                         domain=QONNX_DOMAIN, signed=1, narrow=0, rounding_mode="ROUND"),
    ]
    initializers = [
        ("in_scale", np.float32(0.03)), ("in_zero", np.float32(0.0)), ("act_bits", np.float32(activation_bits)),
        ("conv_latent", latent_conv), ("conv_scale", conv_scale), ("zero", np.float32(0.0)),
        ("weight_bits", np.float32(weight_bits)), ("relu_scale", np.float32(0.02)),
        ("gemm_latent", latent_gemm), ("gemm_scale", gemm_scale), ("out_scale", np.float32(0.5)),
    ]
    model = build_model(nodes, [("x", [1, 2, 5, 5])], [("y", [1, 3])], initializers, domains=[QONNX_DOMAIN])
    expected = {
        "conv_trits": np.clip(np.round(latent_conv / conv_scale), -1, 1).astype(np.int8),
        "gemm_trits": np.where(latent_gemm >= 0, 1, -1).astype(np.int8),
    }
    return model, expected


def test_qonnx_ternary_and_binary_weights(tmp_path, caplog):
    model, expected = qonnx_model()
    with caplog.at_level(logging.INFO, logger="bonsai_mcu"):
        compiled = compile_model(save(model, tmp_path), load_target("host"))
    graph = compiled.graph
    conv, gemm = weighted_nodes(graph)
    assert warnings_of(caplog) == []

    assert conv.quant["method"] == "exact"
    assert conv.quant["weight_error"] == 0.0
    conv_trits = expected["conv_trits"].transpose(0, 2, 3, 1).reshape(4, -1)
    np.testing.assert_array_equal(conv.quant["values"], conv_trits)
    assert gemm.quant["method"] == "exact"
    np.testing.assert_array_equal(gemm.quant["values"], expected["gemm_trits"])

    assert graph.tensors[graph.inputs[0]].qparams.scale == pytest.approx(0.03)
    assert graph.tensors[graph.inputs[0]].qparams.zero_point == 0
    relu_qparams = graph.tensors[conv.outputs[0]].qparams
    assert (relu_qparams.scale, relu_qparams.zero_point) == (pytest.approx(0.02), -128)
    samples = [[np.random.default_rng(9).standard_normal((1, 2, 5, 5))]]
    assert host_matches_reference(compiled, samples, tmp_path / "build")


def test_qonnx_wide_weights_warn(tmp_path, caplog):
    model, _ = qonnx_model(weight_bits=4)
    with caplog.at_level(logging.WARNING, logger="bonsai_mcu"):
        import_onnx(save(model, tmp_path))
    assert any("conv_weight_quant" in message and "--keep-int8" in message for message in warnings_of(caplog))


def test_qonnx_rejects_four_bit_activations(tmp_path):
    model, _ = qonnx_model(activation_bits=4)
    with pytest.raises(UnsupportedModelError, match="4-bit activations"):
        import_onnx(save(model, tmp_path))


def test_qonnx_finn_domain(tmp_path):
    node = helper.make_node("BipolarQuant", ["w", "s"], ["wq"], name="binary", domain="finn.custom_op.general")
    gemm = helper.make_node("MatMul", ["x", "wq"], ["y"], name="matmul")
    model = build_model([node, gemm], [("x", [1, 4])], [("y", [1, 2])],
                        [("w", np.array([[1, -2], [0, 3], [-1, -1], [2, 0]], np.float32)), ("s", np.float32(0.5))],
                        domains=["finn.custom_op.general"])
    graph = import_onnx(save(model, tmp_path))
    np.testing.assert_array_equal(graph.nodes[0].weights, [[0.5, 0.5, -0.5, 0.5], [-0.5, 0.5, -0.5, 0.5]])


# ===== --keep-int8 =====


def three_layer_model() -> onnx.ModelProto:
    rng = np.random.default_rng(10)
    nodes, initializers, source = [], [], "x"
    for index, (fan_in, fan_out) in enumerate(((8, 16), (16, 16), (16, 4))):
        output = "y" if index == 2 else f"hidden{index}"
        nodes.append(helper.make_node("Gemm", [source, f"w{index}"], [output], name=f"dense{index}", transB=1))
        initializers.append((f"w{index}", rng.standard_normal((fan_out, fan_in)).astype(np.float32)))
        source = output
    return build_model(nodes, [("x", [1, 8])], [("y", [1, 4])], initializers)


@pytest.mark.parametrize("layers, expected", [
    ({"first", "last"}, ["int8", "ternary", "int8"]),
    ({"last"}, ["ternary", "ternary", "int8"]),
    ({"dense1"}, ["ternary", "int8", "ternary"]),
])
def test_keep_int8_selects_layers(tmp_path, layers, expected):
    path = save(three_layer_model(), tmp_path)
    compiled = compile_model(path, load_target("host"), options=QuantOptions(int8_layers=layers))
    assert [node.quant["format"] for node in weighted_nodes(compiled.graph)] == expected


def test_keep_int8_unknown_layer(tmp_path):
    path = save(three_layer_model(), tmp_path)
    with pytest.raises(BonsaiError, match="--keep-int8: no Conv, Gemm or MatMul node named middle"):
        compile_model(path, load_target("host"), options=QuantOptions(int8_layers={"middle"}))


@pytest.mark.parametrize("option", ["--keep-int8", "--int8-layers"])
def test_keep_int8_command_line(tmp_path, option):
    path = save(three_layer_model(), tmp_path)
    result = CliRunner().invoke(main, ["generate", str(path), "-o", str(tmp_path / "out"), option, "first,last"])
    assert result.exit_code == 0, result.output
    assert "int8 weights: 2 layers" in result.output


def test_keep_int8_help_text():
    result = CliRunner().invoke(main, ["generate", "--help"])
    assert "--keep-int8, --int8-layers" in result.output
    assert "first and last" in result.output


def test_qparams_match_calibrated_derivation():
    """The parameters QDQ import keeps for a uint8 range equal those calibration derives from it."""
    calibrated = qparams_from_range(0.0, 5.1)
    from bonsai_mcu.formats import int8_qparams

    imported = int8_qparams(calibrated.scale, calibrated.zero_point + 128, unsigned=True)
    assert (imported.scale, imported.zero_point) == (calibrated.scale, calibrated.zero_point)
