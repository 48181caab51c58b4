"""Quantize stage and the rounding rules of the reference.

Expected values are worked out by hand in the comments next to them.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import helper

from bonsai_mcu import BonsaiError
from bonsai_mcu.importer import import_onnx
from bonsai_mcu.ir import Node, QParams
from bonsai_mcu.quantize import (QuantOptions, choose_granularity, fixed_point, qparams_from_range, quantize,
                                 quantize_weights, ternarize)
from bonsai_mcu.reference import requantize, round_half_away, rounding_divide, rounding_shift, saturate

from graphs import initializer, make_model, save, single_op


# -- rounding rules ------------------------------------------------------------


def test_round_half_away_ties():
    values = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -127.5])
    np.testing.assert_array_equal(round_half_away(values), [1, -1, 2, -2, 3, -3, 127, -128])


def test_round_half_away_near_ties():
    values = np.array([0.49999999, -0.49999999, 0.50000001, -0.50000001, 0.0, -0.0])
    np.testing.assert_array_equal(round_half_away(values), [0, 0, 1, -1, 0, 0])


def test_rounding_shift_ties():
    # 3 / 2 = 1.5, -3 / 2 = -1.5, 1 / 2, 5 / 2, 6 / 4 = 1.5, -10 / 4 = -2.5, 12 / 8 = 1.5
    values = np.array([3, -3, 1, -1, 5, -5], dtype=np.int64)
    np.testing.assert_array_equal(rounding_shift(values, 1), [2, -2, 1, -1, 3, -3])
    np.testing.assert_array_equal(rounding_shift(np.array([6, -10, 12, -12]), 2), [2, -3, 3, -3])
    np.testing.assert_array_equal(rounding_shift(np.array([12, -12]), 3), [2, -2])


def test_rounding_shift_just_below_ties():
    # 2**30 - 1 over 2**31 is just below 0.5; 3 * 2**29 - 1 over 2**30 just below 1.5.
    values = np.array([2**30 - 1, -(2**30 - 1), 3 * 2**29 - 1, -(3 * 2**29 - 1)], dtype=np.int64)
    np.testing.assert_array_equal(rounding_shift(values[:2], 31), [0, 0])
    np.testing.assert_array_equal(rounding_shift(values[2:], 30), [1, -1])


def test_rounding_shift_extremes():
    # The C contract bounds |value| by 2**62; the largest values still round right.
    values = np.array([2**62, -(2**62), 2**62 - 1, 3 * 2**60, -(3 * 2**60)], dtype=np.int64)
    np.testing.assert_array_equal(rounding_shift(values, 62), [1, -1, 1, 1, -1])
    np.testing.assert_array_equal(rounding_shift(values[3:], 61), [2, -2])


def test_rounding_divide_ties():
    numerators = np.array([5, -5, 1, -1, 3, -3, 7, -7, 0])
    denominators = np.array([2, 2, 2, 2, 6, 6, 3, 3, 9])
    # 2.5, -2.5, 0.5, -0.5, 0.5, -0.5, 2.33, -2.33, 0
    np.testing.assert_array_equal(rounding_divide(numerators, denominators), [3, -3, 1, -1, 1, -1, 2, -2, 0])


def test_rounding_divide_full_windows():
    # Every element of a 3x3 window at the int8 limits, and one just past a tie.
    numerators = np.array([127 * 9, -128 * 9, 127 * 9 + 4, 127 * 9 + 5, -128 * 9 - 5])
    np.testing.assert_array_equal(rounding_divide(numerators, 9), [127, -128, 127, 128, -129])
    np.testing.assert_array_equal(saturate(rounding_divide(numerators, 9)), [127, -128, 127, 127, -128])


def test_saturate_limits():
    values = np.array([-129, -128, 0, 127, 128, 10**12, -(10**12)])
    np.testing.assert_array_equal(saturate(values), [-128, -128, 0, 127, 127, 127, -128])
    np.testing.assert_array_equal(saturate(values, 0, 100), [0, 0, 0, 100, 100, 100, 0])
    assert saturate(values).dtype == np.int8


def test_qparams_quantize_ties():
    qparams = QParams(scale=0.5, zero_point=3)
    # 0.25 / 0.5 = 0.5 -> 1, -0.25 -> -1, 0.75 -> 1.5 -> 2, -0.75 -> -2; then + 3.
    values = np.array([0.25, -0.25, 0.75, -0.75, 0.0])
    np.testing.assert_array_equal(qparams.quantize(values), [4, 2, 5, 1, 3])


def test_qparams_quantize_saturation():
    qparams = QParams(scale=1.0, zero_point=0)
    values = np.array([126.5, 127.49, 127.5, 1e9, -127.5, -128.49, -128.5, -1e9])
    np.testing.assert_array_equal(qparams.quantize(values), [127, 127, 127, 127, -128, -128, -128, -128])
    shifted = QParams(scale=1.0, zero_point=-100)
    np.testing.assert_array_equal(shifted.quantize(np.array([-28.5, -27.5, 300.0])), [-128, -128, 127])


def test_qparams_from_range():
    qparams = qparams_from_range(-1.0, 1.0)
    # scale 2 / 255; zero point round(-128 + 127.5) = round(-0.5) = -1 (half away from zero).
    assert qparams.scale == pytest.approx(2.0 / 255.0)
    assert qparams.zero_point == -1
    assert qparams.quantize(np.array([0.0]))[0] == qparams.zero_point
    np.testing.assert_array_equal(qparams.quantize(np.array([-1.0, 1.0])), [-128, 127])


def test_qparams_from_range_includes_zero():
    positive = qparams_from_range(2.0, 5.0)
    assert positive.zero_point == -128
    assert positive.scale == pytest.approx(5.0 / 255.0)
    negative = qparams_from_range(-3.0, -1.0)
    assert negative.zero_point == 127
    constant = qparams_from_range(0.0, 0.0)
    assert constant.scale > 0


def test_requantize_ties_and_limits():
    quant = {
        "multiplier_matrix": np.array([[2**30], [2**30]], dtype=np.int64),
        "bias_fixed": np.array([0, 2**31], dtype=np.int64),
        "shift": 31, "output_zero_point": 0, "act_min": -128, "act_max": 127,
    }
    # Channel 0: acc * 0.5; channel 1: acc * 0.5 + 1.
    accumulators = np.array([[[3], [3]], [[-3], [-3]], [[1000], [-1000]], [[-1], [-4]]], dtype=np.int64)
    out = requantize(accumulators, quant)
    np.testing.assert_array_equal(out, [[2, 3], [-2, -1], [127, -128], [-1, -1]])

    relu = dict(quant, output_zero_point=-10, act_min=-10, act_max=20)
    np.testing.assert_array_equal(requantize(accumulators, relu), [[-8, -7], [-10, -10], [20, -10], [-10, -10]])


def test_requantize_sums_groups_before_rounding():
    # Two groups of 0.25 * acc each: 1 * 0.25 + 1 * 0.25 = 0.5 -> 1 only when summed before rounding.
    quant = {
        "multiplier_matrix": np.array([[2**29, 2**29]], dtype=np.int64),
        "bias_fixed": np.array([0], dtype=np.int64),
        "shift": 31, "output_zero_point": 0, "act_min": -128, "act_max": 127,
    }
    np.testing.assert_array_equal(requantize(np.array([[[1, 1]], [[-1, -1]]]), quant), [[1], [-1]])


# -- ternarization ---------------------------------------------------------------


def test_absmean_hand_example():
    weights = np.array([[0.9, -0.3, 0.05, -1.2]])
    # s = (0.9 + 0.3 + 0.05 + 1.2) / 4 = 0.6125; W / s = 1.47, -0.49, 0.08, -1.96
    trits, scales, size, used = ternarize(weights, "absmean", "per-channel", 128)
    np.testing.assert_array_equal(trits, [[1, 0, 0, -1]])
    np.testing.assert_allclose(scales, [[0.6125]])
    assert size == 4
    assert used == "absmean"


def test_absmean_ties_round_away():
    weights = np.array([[0.5, 1.5, -0.5, -1.5, 0.0, 0.0, 0.0, 0.0]])
    # s = 4 / 8 = 0.5; W / s = 1, 3, -1, -3, 0: clipped to [-1, 1].
    trits, scales, _, _ = ternarize(weights, "absmean", "per-tensor", 128)
    np.testing.assert_array_equal(trits, [[1, 1, -1, -1, 0, 0, 0, 0]])
    # s = 1; W / s = 0.5 and -0.5 are ties and round away from zero.
    trits, scales, _, _ = ternarize(np.array([[0.5, 1.5, -0.5, -1.5]]), "absmean", "per-tensor", 128)
    np.testing.assert_array_equal(trits, [[1, 1, -1, -1]])
    np.testing.assert_allclose(scales, [[1.0]])


def test_twn_hand_example():
    weights = np.array([[0.9, -0.3, 0.05, -1.2]])
    # threshold 0.7 * 0.6125 = 0.42875 keeps 0.9 and -1.2; s = (0.9 + 1.2) / 2
    trits, scales, _, used = ternarize(weights, "twn", "per-channel", 128)
    np.testing.assert_array_equal(trits, [[1, 0, 0, -1]])
    np.testing.assert_allclose(scales, [[1.05]])
    assert used == "twn"


def test_twn_per_tensor_hand_example():
    weights = np.array([[1.0, 0.1], [-0.4, 2.0]])
    # mean |W| = 3.5 / 4 = 0.875, threshold 0.6125 keeps 1.0 and 2.0; s = 1.5
    trits, scales, _, _ = ternarize(weights, "twn", "per-tensor", 128)
    np.testing.assert_array_equal(trits, [[1, 0], [0, 1]])
    np.testing.assert_allclose(scales, [[1.5]])


def test_twn_all_zero_channel():
    weights = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.2]])
    trits, scales, _, _ = ternarize(weights, "twn", "per-channel", 128)
    np.testing.assert_array_equal(trits, [[0, 0, 0], [1, -1, 0]])
    np.testing.assert_allclose(scales, [[0.0], [1.0]])


def test_group_scales_partial_last_group():
    # K = 3, G = 2: groups [1, -1] and [3]. The last group's mean is over its one weight.
    trits, scales, size, _ = ternarize(np.array([[1.0, -1.0, 3.0]]), "absmean", "group", 2)
    np.testing.assert_array_equal(trits, [[1, -1, 1]])
    np.testing.assert_allclose(scales, [[1.0, 3.0]])
    assert size == 2


def test_twn_partial_last_group_threshold():
    # K = 6, G = 4: last group [0.5, 1.0], mean 0.75, threshold 0.525 keeps only 1.0.
    weights = np.array([[1.0, -1.0, 1.0, -1.0, 0.5, 1.0]])
    trits, scales, _, _ = ternarize(weights, "twn", "group", 4)
    np.testing.assert_array_equal(trits, [[1, -1, 1, -1, 0, 1]])
    np.testing.assert_allclose(scales, [[1.0, 1.0]])


def test_group_scales_layout():
    # Two channels, K = 5, G = 2: three groups per channel, [O, ceil(K / G)] scales.
    weights = np.array([[2.0, -2.0, 0.0, 4.0, -1.0], [0.5, 0.5, -3.0, 3.0, 7.0]])
    trits, scales, size, used = ternarize(weights, "auto", "group", 2)
    assert used == "exact"
    np.testing.assert_array_equal(trits, [[1, -1, 0, 1, -1], [1, 1, -1, 1, 1]])
    np.testing.assert_array_equal(scales, [[2.0, 4.0, 1.0], [0.5, 3.0, 7.0]])
    assert size == 2


def exact_round_trip(weights: np.ndarray, granularity: str, group_size: int = 128) -> None:
    trits, scales, size, used = ternarize(weights, "exact", granularity, group_size)
    assert used == "exact"
    assert set(np.unique(trits)) <= {-1, 0, 1}
    expanded = np.repeat(np.broadcast_to(scales, (weights.shape[0], scales.shape[1])), size, axis=1)
    np.testing.assert_array_equal(trits * expanded[:, :weights.shape[1]], weights)


def ternary_weights(out_channels: int, depth: int, scales: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 weights holding {-s, 0, +s}, with s broadcast from `scales` ([O or 1, K])."""
    rng = np.random.default_rng(seed)
    trits = rng.integers(-1, 2, size=(out_channels, depth))
    return (trits * scales).astype(np.float32).astype(np.float64)


def test_exact_round_trip_per_channel():
    scales = np.array([[0.013], [1.7], [0.25], [3e-5]])
    exact_round_trip(ternary_weights(4, 37, scales), "per-channel")


def test_exact_round_trip_per_tensor():
    exact_round_trip(ternary_weights(5, 19, np.array([[0.0421]])), "per-tensor")


def test_exact_round_trip_per_group():
    rng = np.random.default_rng(3)
    group_scales = rng.uniform(0.01, 2.0, size=(3, 4))
    scales = np.repeat(group_scales, 8, axis=1)[:, :29]
    exact_round_trip(ternary_weights(3, 29, scales), "group", 8)


def test_exact_rejects_four_values():
    with pytest.raises(BonsaiError, match="not ternary"):
        ternarize(np.array([[1.0, -1.0, 0.5, 0.0]]), "exact", "per-channel", 128)


def test_auto_granularity_finds_exact_layout():
    options = QuantOptions(group_size=8)
    per_tensor = ternary_weights(4, 16, np.array([[0.5]]))
    per_channel = ternary_weights(4, 16, np.array([[0.5], [0.25], [2.0], [1.0]]))
    per_group = ternary_weights(2, 16, np.repeat(np.array([[0.5, 0.7], [0.3, 0.1]]), 8, axis=1))
    assert choose_granularity(options, per_tensor) == "per-tensor"
    assert choose_granularity(options, per_channel) == "per-channel"
    assert choose_granularity(options, per_group) == "group"


def test_exact_import_keeps_weights(tmp_path):
    scales = np.repeat(np.array([[0.5, 0.125, 2.0], [0.25, 1.0, 0.0625]]), 4, axis=1)[:, :10]
    for granularity, weights in (("per-channel", ternary_weights(2, 10, np.array([[0.5], [0.75]]))),
                                 ("per-tensor", ternary_weights(2, 10, np.array([[0.3]]))),
                                 ("group", ternary_weights(2, 10, scales))):
        node = Node("Dense", "dense", ["x"], ["y"], {}, weights, np.zeros(2))
        quantize_weights(node, QuantOptions(group_size=4))
        assert node.quant["method"] == "exact", granularity
        assert node.quant["granularity"] == granularity
        np.testing.assert_array_equal(node.quant["dequantized"], weights)
        assert node.quant["weight_error"] == 0.0


def test_int8_layer_weights():
    weights = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]])
    node = Node("Dense", "keep", ["x"], ["y"], {}, weights, np.zeros(2))
    quantize_weights(node, QuantOptions(int8_layers={"keep"}))
    assert node.quant["format"] == "int8"
    # 127 / 1.0 per unit: 1.0 -> 127, -0.5 -> -63.5 -> -64, 0.25 -> 31.75 -> 32
    np.testing.assert_array_equal(node.quant["values"], [[127, -64, 32], [0, 0, 0]])


# -- fixed point -------------------------------------------------------------------


@pytest.mark.parametrize("largest", [1e-9, 0.0031, 0.49999, 0.5, 0.75, 1.0 - 2**-40, 1.0, 3.9, 1000.0])
def test_fixed_point_multiplier_range(largest):
    real = np.array([largest, largest / 3, largest / 1000, 0.0])
    multipliers, shift = fixed_point(real)
    assert 1 <= shift <= 62
    assert 2**30 <= multipliers.max() < 2**31
    assert multipliers.min() >= 0
    np.testing.assert_allclose(multipliers / 2.0**shift, real, rtol=0, atol=2.0**-shift)


def test_fixed_point_rounds_up_to_power_of_two():
    # (1 - 2**-40) * 2**31 rounds to 2**31, which does not fit: one bit less of shift.
    multipliers, shift = fixed_point(np.array([1.0 - 2**-40]))
    assert shift == 30
    assert multipliers[0] == 2**30


def test_fixed_point_bias_lowers_shift():
    multipliers, shift = fixed_point(np.array([1e-6]), np.array([3e9, -1.0]))
    assert 3e9 * 2.0**shift < 2.0**61
    assert multipliers[0] < 2**30
    assert shift >= 1


def test_fixed_point_zero_and_too_large():
    multipliers, shift = fixed_point(np.zeros(3))
    assert shift == 31
    np.testing.assert_array_equal(multipliers, [0, 0, 0])
    with pytest.raises(BonsaiError, match="too large for a 32-bit fixed-point value"):
        fixed_point(np.array([2.0**31]))


# -- calibration ---------------------------------------------------------------------


def dense_model_path(tmp_path):
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gemm", ["x", "b", "c"], ["m"], name="fc"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [1, 6])], [("y", [1, 4])],
                       [initializer("b", rng.standard_normal((6, 4)).astype(np.float32)),
                        initializer("c", rng.standard_normal(4).astype(np.float32))])
    return save(model, tmp_path)


@pytest.fixture
def package_logger(monkeypatch):
    """The bonsai_mcu logger as a library user has it: the command-line interface, run by
    earlier tests in this process, stops propagation to the root logger that caplog reads."""
    logger = logging.getLogger("bonsai_mcu")
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "handlers", [])
    return logger


def test_synthetic_calibration_warns(tmp_path, caplog, package_logger):
    graph = import_onnx(dense_model_path(tmp_path))
    with caplog.at_level(logging.WARNING, logger="bonsai_mcu"):
        quantize(graph, QuantOptions(), None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "no calibration data" in message
    assert "--calibration FILE" in message
    assert all(graph.tensors[name].qparams is not None for name in graph.inputs + graph.outputs)


def test_real_calibration_is_quiet(tmp_path, caplog, package_logger):
    graph = import_onnx(dense_model_path(tmp_path))
    samples = [[np.full((1, 6), value)] for value in (-2.0, 0.5, 3.0)]
    with caplog.at_level(logging.WARNING, logger="bonsai_mcu"):
        quantize(graph, QuantOptions(), samples)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    x = graph.tensors[graph.inputs[0]].qparams
    # The input range is exactly [-2, 3].
    assert x.scale == pytest.approx(5.0 / 255.0)


def test_relu_limits_from_calibration(tmp_path):
    graph = import_onnx(dense_model_path(tmp_path))
    quantize(graph, QuantOptions(), [[np.linspace(-3, 3, 6).reshape(1, 6)]])
    node = graph.nodes[0]
    out = graph.tensors[node.outputs[0]].qparams
    # ReLU fused into the Gemm: the lowest output code is the real 0.
    assert node.quant["act_min"] == out.zero_point
    assert node.quant["act_max"] == 127


def test_unknown_int8_layer(tmp_path):
    graph = import_onnx(dense_model_path(tmp_path))
    with pytest.raises(BonsaiError, match="no Conv, Gemm or MatMul node named nope"):
        quantize(graph, QuantOptions(int8_layers={"nope"}), None)


def test_exact_method_error_names_node(tmp_path):
    graph = import_onnx(save(single_op("MatMul", [1, 3], weights={"b": np.array(
        [[1.0, 0.5], [-1.0, 0.25], [0.0, 2.0]], np.float32)}), tmp_path))
    with pytest.raises(BonsaiError, match="node 'node': weights are not ternary.*--method absmean or twn"):
        quantize(graph, QuantOptions(method="exact"), None)
