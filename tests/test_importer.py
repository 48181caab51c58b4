"""Import stage: every supported op against onnxruntime, and the import errors.

Each case imports a one- or few-node ONNX graph, runs the IR's float
interpreter (reference.run_float, before quantization) through the layout
conversion, and compares with onnxruntime on the same inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bonsai_mcu import BonsaiError
from bonsai_mcu.importer import UnsupportedModelError, import_onnx

from graphs import initializer, make_model, random_inputs, run_ir_float, run_onnxruntime, save, single_op

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed; install the test extra: pip install -e '.[test]'")

RNG = np.random.default_rng(1234)


def weights(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def conv(input_shape, w_shape, bias=True, **attrs) -> onnx.ModelProto:
    tensors = {"w": weights(*w_shape)}
    if bias:
        tensors["b"] = weights(w_shape[0])
    return single_op("Conv", input_shape, weights=tensors, **attrs)


def chain(nodes, input_shape, tensors=None, opset: int = 13, extra_inputs=()) -> onnx.ModelProto:
    """A model whose nodes read 'x' first and whose last node writes 'y'."""
    inputs = [("x", input_shape)] + list(extra_inputs)
    return make_model(nodes, inputs, [("y", None)],
                      [initializer(n, a) for n, a in (tensors or {}).items()], opset=opset)


def node(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}", **attrs)


def gemm(input_shape, b_shape, c_shape=None, **attrs) -> onnx.ModelProto:
    tensors = {"b": weights(*b_shape)}
    if c_shape is not None:
        tensors["c"] = weights(*c_shape)
    return single_op("Gemm", input_shape, weights=tensors, **attrs)


def conv_then(op_nodes, channels=4, size=6, tensors=None, opset: int = 13) -> onnx.ModelProto:
    """Conv [1, 3, size, size] -> [1, channels, size, size] named 'c', then op_nodes."""
    all_tensors = {"w": weights(channels, 3, 3, 3), "b": weights(channels)}
    all_tensors.update(tensors or {})
    first = node("Conv", ["x", "w", "b"], "c", pads=[1, 1, 1, 1])
    return chain([first] + op_nodes, [1, 3, size, size], all_tensors, opset=opset)


# Each case: a model and the IR ops that move or compute data, in order (Reshape
# nodes are views of the same bytes and are left out of the comparison).
CASES = {
    # Conv 2-D
    "conv2d": (lambda: conv([1, 3, 7, 7], (4, 3, 3, 3)), ["Conv"]),
    "conv2d_no_bias": (lambda: conv([1, 3, 5, 5], (2, 3, 1, 1), bias=False), ["Conv"]),
    "conv2d_strides_pads": (lambda: conv([1, 3, 9, 8], (4, 3, 3, 2), strides=[2, 3], pads=[1, 0, 2, 1]), ["Conv"]),
    "conv2d_same_upper": (lambda: conv([1, 2, 9, 8], (3, 2, 4, 3), strides=[2, 2], auto_pad="SAME_UPPER"), ["Conv"]),
    "conv2d_same_lower": (lambda: conv([1, 2, 9, 8], (3, 2, 4, 3), strides=[2, 2], auto_pad="SAME_LOWER"), ["Conv"]),
    "conv2d_valid": (lambda: conv([1, 2, 9, 8], (3, 2, 3, 3), strides=[2, 1], auto_pad="VALID"), ["Conv"]),
    "conv2d_dilation": (lambda: conv([1, 2, 9, 9], (3, 2, 3, 3), dilations=[2, 3], pads=[2, 1, 1, 3]), ["Conv"]),
    "conv2d_groups": (lambda: conv([1, 4, 6, 6], (6, 2, 3, 3), group=2, pads=[1, 1, 1, 1]), ["Conv"]),
    "conv2d_depthwise": (lambda: conv([1, 4, 6, 6], (4, 1, 3, 3), group=4, pads=[1, 1, 1, 1]), ["Conv"]),
    "conv2d_depthwise_multiplier": (lambda: conv([1, 3, 6, 5], (6, 1, 3, 3), group=3, strides=[2, 2]), ["Conv"]),
    # Conv 1-D
    "conv1d": (lambda: conv([1, 3, 11], (5, 3, 3), strides=[2], pads=[1, 2]), ["Conv"]),
    "conv1d_dilation": (lambda: conv([1, 2, 10], (3, 2, 3), dilations=[2], pads=[2, 1]), ["Conv"]),
    "conv1d_same_upper": (lambda: conv([1, 2, 10], (3, 2, 4), strides=[3], auto_pad="SAME_UPPER"), ["Conv"]),
    "conv1d_depthwise": (lambda: conv([1, 4, 9], (4, 1, 5), group=4, auto_pad="SAME_LOWER"), ["Conv"]),
    # Gemm and MatMul
    "gemm_transb_alpha_beta": (lambda: gemm([1, 8], (5, 8), (5,), transB=1, alpha=0.5, beta=2.0), ["Dense"]),
    "gemm_b_not_transposed": (lambda: gemm([1, 8], (8, 5), (5,)), ["Dense"]),
    "gemm_bias_row": (lambda: gemm([1, 8], (5, 8), (1, 5), transB=1), ["Dense"]),
    "gemm_bias_scalar": (lambda: gemm([1, 8], (8, 5), (1,), beta=-1.5), ["Dense"]),
    "gemm_no_bias": (lambda: gemm([1, 8], (8, 5)), ["Dense"]),
    "gemm_batch_rows": (lambda: gemm([3, 8], (8, 5), (5,)), ["Dense"]),
    "matmul": (lambda: single_op("MatMul", [1, 8], weights={"b": weights(8, 5)}), ["Dense"]),
    "matmul_3d": (lambda: single_op("MatMul", [1, 4, 8], weights={"b": weights(8, 5)}), ["Dense"]),
    # Add as bias and as residual
    "matmul_add_bias": (lambda: chain([node("MatMul", ["x", "b"], "m"), node("Add", ["m", "c"], "y")],
                                      [1, 8], {"b": weights(8, 5), "c": weights(5)}), ["Dense"]),
    "conv_add_bias": (lambda: conv_then([node("Add", ["c", "k"], "y")], tensors={"k": weights(1, 4, 1, 1)}),
                      ["Conv"]),
    "conv_add_bias_first": (lambda: conv_then([node("Add", ["k", "c"], "y")], tensors={"k": weights(4, 1, 1)}),
                            ["Conv"]),
    "residual": (lambda: chain([node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
                                node("Add", ["x", "r"], "y")], [1, 3, 5, 5], {"w": weights(3, 3, 3, 3)}),
                 ["Conv", "Add"]),
    "residual_relu": (lambda: chain([node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]),
                                     node("Add", ["c", "x"], "s"), node("Relu", ["s"], "y")],
                                    [1, 3, 5, 5], {"w": weights(3, 3, 3, 3)}), ["Conv", "Add"]),
    "add_broadcast_channels": (lambda: conv_then([node("GlobalAveragePool", ["c"], "g"),
                                                  node("Add", ["c", "g"], "y")]),
                               ["Conv", "AveragePool", "Add"]),
    "add_broadcast_lower_rank": (lambda: chain([node("Add", ["x", "z"], "y")], [1, 2, 3, 4],
                                               extra_inputs=[("z", [4])]), ["Add"]),
    "add_broadcast_both": (lambda: chain([node("Add", ["x", "z"], "y")], [1, 3, 1],
                                         extra_inputs=[("z", [1, 1, 4])]), ["Add"]),
    # Activations
    "relu_fused": (lambda: conv_then([node("Relu", ["c"], "y")]), ["Conv"]),
    "relu_alone": (lambda: single_op("Relu", [1, 10]), ["Clamp"]),
    "clip_opset6": (lambda: conv_then([node("Clip", ["c"], "y", min=-0.5, max=0.75)], opset=6), ["Conv"]),
    "clip_opset11": (lambda: conv_then([node("Clip", ["c", "lo", "hi"], "y")], opset=11,
                                       tensors={"lo": np.array(-0.5, np.float32), "hi": np.array(0.75, np.float32)}),
                     ["Conv"]),
    "clip_opset13_max_only": (lambda: chain([node("Clip", ["x", "", "hi"], "y")], [1, 10],
                                            {"hi": np.array(0.3, np.float32)}), ["Clamp"]),
    "relu6": (lambda: conv_then([node("Clip", ["c", "lo", "hi"], "y")],
                                tensors={"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}),
              ["Conv"]),
    "sigmoid": (lambda: single_op("Sigmoid", [1, 12]), ["Lut"]),
    "tanh": (lambda: conv_then([node("Tanh", ["c"], "y")]), ["Conv", "Lut"]),
    # Pooling
    "average_pool": (lambda: single_op("AveragePool", [1, 3, 7, 7], kernel_shape=[3, 3], strides=[2, 2]),
                     ["AveragePool"]),
    "average_pool_pads_excluded": (lambda: single_op("AveragePool", [1, 3, 6, 7], kernel_shape=[3, 2],
                                                     strides=[2, 2], pads=[1, 1, 1, 0]), ["AveragePool"]),
    "average_pool_pads_included": (lambda: single_op("AveragePool", [1, 3, 6, 7], kernel_shape=[3, 2],
                                                     strides=[2, 2], pads=[1, 1, 1, 0], count_include_pad=1),
                                   ["AveragePool"]),
    "average_pool_ceil": (lambda: single_op("AveragePool", [1, 2, 8, 7], kernel_shape=[3, 3], strides=[2, 2],
                                            ceil_mode=1), ["AveragePool"]),
    "average_pool_ceil_pads": (lambda: single_op("AveragePool", [1, 2, 8, 7], kernel_shape=[3, 3], strides=[2, 2],
                                                 pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
                               ["AveragePool"]),
    "average_pool_1d": (lambda: single_op("AveragePool", [1, 3, 9], kernel_shape=[3], strides=[2], pads=[1, 1]),
                        ["AveragePool"]),
    "max_pool": (lambda: single_op("MaxPool", [1, 3, 8, 8], kernel_shape=[2, 2], strides=[2, 2]), ["MaxPool"]),
    "max_pool_pads_ceil": (lambda: single_op("MaxPool", [1, 3, 8, 7], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 0, 1, 1], ceil_mode=1), ["MaxPool"]),
    "global_average_pool": (lambda: single_op("GlobalAveragePool", [1, 5, 4, 3]), ["AveragePool"]),
    "global_average_pool_1d": (lambda: single_op("GlobalAveragePool", [1, 5, 7]), ["AveragePool"]),
    # Shape ops
    "flatten_after_conv": (lambda: conv_then([node("Flatten", ["c"], "y")]), ["Conv", "Transpose"]),
    "flatten_axis2": (lambda: single_op("Flatten", [1, 2, 3, 4], axis=2), []),
    "reshape_zero_minus_one": (lambda: conv_then([node("Reshape", ["c", "s"], "y")],
                                                 tensors={"s": np.array([0, 2, -1], np.int64)}),
                               ["Conv", "Transpose"]),
    "reshape_then_gemm": (lambda: chain([node("Reshape", ["x", "s"], "r"), node("Gemm", ["r", "b"], "y")],
                                        [1, 2, 3, 4], {"s": np.array([1, -1], np.int64), "b": weights(24, 5)}),
                          ["Dense"]),
    "transpose": (lambda: single_op("Transpose", [1, 2, 3, 4], perm=[0, 2, 3, 1]), []),
    "transpose_default": (lambda: single_op("Transpose", [2, 3, 4]), []),
    "transpose_then_matmul": (lambda: chain([node("Transpose", ["x"], "t", perm=[0, 2, 1]),
                                             node("MatMul", ["t", "b"], "y")], [1, 4, 3], {"b": weights(4, 5)}),
                              ["Transpose", "Dense"]),
    "conv_transpose_conv_layout": (lambda: conv_then([node("Transpose", ["c"], "y", perm=[0, 2, 3, 1])]),
                                   ["Conv"]),
    "squeeze_opset11": (lambda: single_op("Squeeze", [1, 3, 1, 4], opset=11, axes=[2]), []),
    "squeeze_opset13": (lambda: single_op("Squeeze", [1, 3, 1, 4], weights={"axes": np.array([-2], np.int64)}),
                        []),
    "squeeze_all": (lambda: single_op("Squeeze", [1, 3, 1, 4], opset=11), []),
    "unsqueeze_opset11": (lambda: single_op("Unsqueeze", [1, 3, 4], opset=11, axes=[1, -1]), []),
    "unsqueeze_opset13": (lambda: single_op("Unsqueeze", [1, 3, 4], weights={"axes": np.array([0, 3], np.int64)}),
                          []),
    "squeeze_after_pool": (lambda: conv_then([node("GlobalAveragePool", ["c"], "g"),
                                              node("Squeeze", ["g", "axes"], "y")],
                                             tensors={"axes": np.array([2, 3], np.int64)}),
                           ["Conv", "AveragePool"]),
    # Softmax
    "softmax_opset11_2d": (lambda: single_op("Softmax", [1, 10], opset=11), ["Softmax"]),
    "softmax_opset11_coerced": (lambda: single_op("Softmax", [1, 3, 4], opset=11, axis=1), ["Softmax"]),
    "softmax_opset13_last": (lambda: single_op("Softmax", [1, 3, 4]), ["Softmax"]),
    "softmax_opset13_middle": (lambda: single_op("Softmax", [1, 3, 4], axis=1), ["Transpose", "Softmax"]),
    "softmax_after_conv": (lambda: conv_then([node("Softmax", ["c"], "y", axis=1)]), ["Conv", "Softmax"]),
    "softmax_opset11_per_channel_rows": (lambda: conv_then([node("Softmax", ["c"], "y", axis=2)], opset=11),
                                         ["Conv", "Transpose", "Softmax"]),
    # Layout changes between row-major and channels-last tensors
    "residual_row_major_input": (lambda: chain([node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]),
                                                node("Add", ["c", "z"], "y")], [1, 3, 5, 5],
                                               {"w": weights(4, 3, 3, 3)}, extra_inputs=[("z", [1, 4, 5, 5])]),
                                 ["Conv", "Transpose", "Add"]),
    "unsqueeze_then_conv": (lambda: chain([node("Unsqueeze", ["x", "axes"], "u"), node("Conv", ["u", "w"], "y")],
                                          [1, 3, 8], {"axes": np.array([2], np.int64), "w": weights(2, 3, 1, 3)}),
                            ["Transpose", "Conv"]),
    "conv1d_flatten_gemm": (lambda: chain([node("Conv", ["x", "w"], "c", strides=[2]), node("Relu", ["c"], "r"),
                                           node("Flatten", ["r"], "f"), node("Gemm", ["f", "b", "k"], "y")],
                                          [1, 2, 9], {"w": weights(3, 2, 3), "b": weights(12, 4), "k": weights(4)}),
                            ["Conv", "Transpose", "Dense"]),
    "matmul_on_conv_output": (lambda: conv_then([node("MatMul", ["c", "m"], "y")], tensors={"m": weights(6, 5)}),
                              ["Conv", "Transpose", "Dense"]),
    "reshape_between_convs": (lambda: conv_then([node("Reshape", ["c", "s"], "r"), node("Conv", ["r", "w2"], "y")],
                                                tensors={"s": np.array([1, 2, 6, 12], np.int64),
                                                         "w2": weights(3, 2, 1, 1)}),
                              ["Conv", "Transpose", "Transpose", "Conv"]),
    "gemm_sigmoid": (lambda: chain([node("Gemm", ["x", "b"], "m"), node("Sigmoid", ["m"], "y")], [1, 6],
                                   {"b": weights(6, 4)}), ["Dense", "Lut"]),
    "leaky_relu": (lambda: single_op("LeakyRelu", [1, 12], alpha=0.2), ["Lut"]),
    "hard_sigmoid": (lambda: single_op("HardSigmoid", [1, 12], alpha=0.3, beta=0.4), ["Lut"]),
    "hard_swish": (lambda: single_op("HardSwish", [1, 12], opset=14), ["Lut"]),
    "elu": (lambda: single_op("Elu", [1, 12], alpha=0.7), ["Lut"]),
    "softplus": (lambda: single_op("Softplus", [1, 12]), ["Lut"]),
    "global_max_pool": (lambda: single_op("GlobalMaxPool", [1, 5, 4, 3]), ["MaxPool"]),
    # Folded and removed nodes
    "batchnorm_after_conv": (lambda: conv_then([node("BatchNormalization", ["c", "g", "be", "mu", "var"], "y",
                                                     epsilon=1e-3)],
                                               tensors={"g": weights(4), "be": weights(4), "mu": weights(4),
                                                        "var": np.abs(weights(4)) + 0.5}), ["Conv"]),
    "batchnorm_after_gemm": (lambda: chain([node("Gemm", ["x", "b", "c"], "m", transB=1),
                                            node("BatchNormalization", ["m", "g", "be", "mu", "var"], "y")],
                                           [1, 6], {"b": weights(4, 6), "c": weights(4), "g": weights(4),
                                                    "be": weights(4), "mu": weights(4),
                                                    "var": np.abs(weights(4)) + 0.5}), ["Dense"]),
    "identity_dropout": (lambda: chain([node("Identity", ["x"], "i"), node("Gemm", ["i", "b"], "m"),
                                        node("Dropout", ["m"], "d"), node("Identity", ["d"], "y")],
                                       [1, 6], {"b": weights(6, 3)}), ["Dense"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_float_matches_onnxruntime(case, tmp_path):
    build, expected_ops = CASES[case]
    model = build()
    path = save(model, tmp_path)
    graph = import_onnx(path)

    assert [n.op for n in graph.nodes if n.op != "Reshape"] == expected_ops
    for feeds in random_inputs(model, seed=7, count=2):
        want = run_onnxruntime(path, feeds)
        got = run_ir_float(graph, [feeds[name] for name in graph.onnx_inputs])
        assert len(got) == len(want)
        for expected, actual in zip(want, got):
            assert actual.shape == expected.shape
            np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_tensor_layout_round_trip():
    from bonsai_mcu.ir import Tensor

    logical = np.arange(60).reshape(1, 3, 4, 5)
    tensor = Tensor("t", (1, 4, 5, 3), (0, 2, 3, 1))
    physical = tensor.to_physical(logical)

    assert tensor.logical_shape == (1, 3, 4, 5)
    assert physical.shape == (1, 4, 5, 3)
    assert physical[0, 1, 2, 0] == logical[0, 0, 1, 2]
    np.testing.assert_array_equal(tensor.to_logical(physical.reshape(-1)), logical)


def test_relu_fused_into_conv(tmp_path):
    graph = import_onnx(save(CASES["relu6"][0](), tmp_path))
    assert graph.nodes[0].attrs["activation"] == ("clip", 0.0, 6.0)


def test_batchnorm_folded_weights(tmp_path):
    model = CASES["batchnorm_after_gemm"][0]()
    graph = import_onnx(save(model, tmp_path))
    tensors = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    factor = tensors["g"] / np.sqrt(tensors["var"] + 1e-5)
    np.testing.assert_allclose(graph.nodes[0].weights, tensors["b"] * factor[:, None], rtol=1e-6)
    np.testing.assert_allclose(graph.nodes[0].bias, (tensors["c"] - tensors["mu"]) * factor + tensors["be"],
                               rtol=1e-6, atol=1e-6)


# -- errors -------------------------------------------------------------------


def test_unsupported_ops_all_listed(tmp_path):
    nodes = [
        helper.make_node("Cos", ["x"], ["a"], name="first_cos"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Floor", ["b"], ["y"], name="then_floor"),
    ]
    path = save(make_model(nodes, [("x", [1, 4])], [("y", [1, 4])]), tmp_path)

    with pytest.raises(UnsupportedModelError) as caught:
        import_onnx(path)
    message = str(caught.value)
    assert [(op, name) for op, name, _ in caught.value.problems] == [("Cos", "first_cos"), ("Floor", "then_floor")]
    assert "2 unsupported constructs" in message
    assert "Cos node 'first_cos'" in message
    assert "Floor node 'then_floor'" in message
    assert str(path) in message


def test_unsupported_in_parallel_branches(tmp_path):
    nodes = [
        helper.make_node("Cos", ["x"], ["a"], name="cos_branch"),
        helper.make_node("MatMul", ["x", "x2"], ["b"], name="matmul_two_inputs"),
        helper.make_node("Add", ["a", "b"], ["y"], name="join"),
    ]
    model = make_model(nodes, [("x", [1, 4, 4]), ("x2", [1, 4, 4])], [("y", [1, 4, 4])])
    with pytest.raises(UnsupportedModelError) as caught:
        import_onnx(save(model, tmp_path))
    assert [(op, name) for op, name, _ in caught.value.problems] == [("Cos", "cos_branch"),
                                                                    ("MatMul", "matmul_two_inputs")]


def lstm_then(node: onnx.NodeProto, tensors: dict) -> onnx.ModelProto:
    """An unsupported LSTM whose flattened output 'flat' feeds `node`, which writes 'y'."""
    lstm_tensors = {"lstm_w": weights(1, 16, 3), "lstm_r": weights(1, 16, 4)}
    nodes = [
        helper.make_node("LSTM", ["x", "lstm_w", "lstm_r"], ["", "h"], name="lstm", hidden_size=4),
        helper.make_node("Flatten", ["h"], ["flat"], name="flatten"),
        node,
    ]
    return make_model(nodes, [("x", [2, 1, 3])], [("y", None)],
                      [initializer(n, a) for n, a in {**lstm_tensors, **tensors}.items()])


@pytest.mark.parametrize("node, tensors, reason", [
    (helper.make_node("Gemm", ["flat", "w"], ["y"], name="after", transA=1), {"w": weights(1, 4)},
     "transA=1 is not supported"),
    (helper.make_node("Dropout", ["flat", "ratio", "training"], ["y"], name="after"),
     {"ratio": np.float32(0.5), "training": np.array(True)}, "training_mode is true"),
], ids=["gemm_transA", "dropout_training"])
def test_attribute_problems_behind_rejected_node(tmp_path, node, tensors, reason):
    model = lstm_then(node, tensors)
    with pytest.raises(UnsupportedModelError) as caught:
        import_onnx(save(model, tmp_path))
    problems = caught.value.problems
    assert [(op, name) for op, name, _ in problems] == [("LSTM", "lstm"), (node.op_type, "after")]
    assert reason in problems[1][2]


@pytest.mark.parametrize("attrs, reason", [
    ({"storage_order": 1}, "storage_order=1 is not supported"),
    ({"dilations": [2, 2]}, "dilated pooling is not supported"),
], ids=["storage_order", "dilations"])
def test_pool_attributes_behind_rejected_node(tmp_path, attrs, reason):
    nodes = [
        helper.make_node("Cos", ["x"], ["a"], name="cos"),
        helper.make_node("MaxPool", ["a"], ["y"], name="pool", kernel_shape=[2, 2], **attrs),
    ]
    model = make_model(nodes, [("x", [1, 2, 6, 6])], [("y", None)])
    with pytest.raises(UnsupportedModelError) as caught:
        import_onnx(save(model, tmp_path))
    problems = caught.value.problems
    assert [(op, name) for op, name, _ in problems] == [("Cos", "cos"), ("MaxPool", "pool")]
    assert reason in problems[1][2]


def test_supported_node_behind_rejected_node_unlisted(tmp_path):
    nodes = [
        helper.make_node("Cos", ["x"], ["a"], name="cos"),
        helper.make_node("Gemm", ["a", "w"], ["y"], name="gemm", transB=1),
    ]
    model = make_model(nodes, [("x", [1, 4])], [("y", None)], [initializer("w", weights(3, 4))])
    with pytest.raises(UnsupportedModelError) as caught:
        import_onnx(save(model, tmp_path))
    assert [(op, name) for op, name, _ in caught.value.problems] == [("Cos", "cos")]


def test_malformed_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BonsaiError, match="garbage.onnx: not a valid ONNX file"):
        import_onnx(path)


def test_truncated_file(tmp_path):
    model = conv([1, 3, 8, 8], (8, 3, 3, 3))
    data = model.SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BonsaiError, match="truncated.onnx: not a valid ONNX file"):
        import_onnx(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(BonsaiError, match="empty.onnx: not a valid ONNX file"):
        import_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(BonsaiError, match="absent.onnx: model file not found"):
        import_onnx(tmp_path / "absent.onnx")


def test_non_float_input(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.FLOAT)]
    model = make_model(nodes, [("x", [1, 4], TensorProto.INT64)], [("y", [1, 4])])
    with pytest.raises(BonsaiError) as caught:
        import_onnx(save(model, tmp_path))
    message = str(caught.value)
    assert "input 'x' has type INT64" in message
    assert "only float32 inputs are supported" in message
    assert not isinstance(caught.value, UnsupportedModelError)


def test_dynamic_non_batch_dimension(tmp_path):
    model = single_op("Relu", [1, "length"])
    with pytest.raises(BonsaiError) as caught:
        import_onnx(save(model, tmp_path))
    message = str(caught.value)
    assert "input 'x' has a dynamic dimension at axis 1 ('length')" in message
    assert "static shapes" in message


def test_dynamic_batch_dimension_becomes_one(tmp_path):
    model = gemm(["batch", 8], (8, 3), (3,))
    graph = import_onnx(save(model, tmp_path))
    assert graph.tensors[graph.inputs[0]].logical_shape == (1, 8)


def test_relu_behind_identity_not_fused_when_shared(tmp_path):
    # c is read by Identity (then Relu) and by Add: fusing the Relu into the Conv would change c.
    model = conv_then([node("Identity", ["c"], "i"), node("Relu", ["i"], "r"), node("Add", ["r", "c"], "y")])
    path = save(model, tmp_path)
    graph = import_onnx(path)

    assert graph.nodes[0].attrs["activation"] is None
    assert "Clamp" in [n.op for n in graph.nodes]
    for feeds in random_inputs(model, seed=3, count=1):
        want = run_onnxruntime(path, feeds)
        got = run_ir_float(graph, [feeds[name] for name in graph.onnx_inputs])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
