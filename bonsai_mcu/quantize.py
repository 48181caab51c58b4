"""Quantize stage: ternary (or int8) weights, int8 activations, integer requantization.

Weights of Conv and Dense are ternarized by default: t in {-1, 0, +1} times a
float scale per output channel, per tensor, or per group of `group_size`
consecutive weights along the input dimension. Activations are int8 per
tensor with an affine (scale, zero_point) found by running the float graph,
with the quantized weights in place, over calibration samples.

The integer parameters follow one rule for every weighted op (see
reference.requantize): a 32-bit multiplier per scale, one shift per layer,
and a 64-bit bias already in the output's fixed-point domain, so the C
rounds once on the exact 64-bit sum.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import BonsaiError
from .ir import WEIGHTED_OPS, Graph, Node, QParams
from .reference import lut_function, round_half_away, run_float

log = logging.getLogger(__name__)

METHODS = ("auto", "absmean", "twn", "exact")
GRANULARITIES = ("auto", "per-channel", "per-tensor", "group")

# granularity=auto keeps a per-channel scale only where its 32-bit multiplier
# costs at most 0.1 bit per weight, i.e. a channel holds at least 320 weights.
AUTO_PER_CHANNEL_MIN_WEIGHTS = 320

# Synthetic calibration when the user gives no data: standard normal inputs.
SYNTHETIC_SAMPLES = 32
SYNTHETIC_SEED = 0

# Relative tolerance for recognising weights that are already ternary.
EXACT_TOLERANCE = 1e-6

# Group sizes granularity=auto also tries when it looks for weights that are
# already ternary per group, largest (fewest scales) first.
EXACT_GROUP_SIZES = (256, 128, 64, 32, 16)

# Ops whose output keeps the int8 parameters of their input: the C moves or
# compares codes but does not requantize them.
PASS_THROUGH_OPS = ("Reshape", "Transpose", "AveragePool", "MaxPool", "Clamp")


@dataclass
class QuantOptions:
    method: str = "auto"
    granularity: str = "auto"
    group_size: int = 128
    int8_layers: set[str] = field(default_factory=set)
    # Precision of every Conv, Gemm and MatMul: one of PRECISIONS. float32
    # keeps activations in float as well.
    weights: str = "ternary"


PRECISIONS = ("ternary", "int8", "float32")


def is_float_graph(graph: Graph) -> bool:
    """Tell whether the graph runs in float32: the quantize stage then gives no tensor int8 parameters."""
    return all(graph.tensors[name].qparams is None for name in graph.inputs + graph.outputs)


# -- weights ------------------------------------------------------------------


def _group_view(weights: np.ndarray, granularity: str, group_size: int) -> tuple[np.ndarray, int]:
    """Split [O, K] weights into scale groups: returns [O', G, size] and the group size.

    Per tensor is one group over all weights; per channel one group per row;
    group G splits each row into ceil(K / G) groups (the last one zero-padded).
    """
    out_channels, depth = weights.shape
    if granularity == "per-tensor":
        return weights.reshape(1, 1, -1), depth
    if granularity == "per-channel":
        return weights.reshape(out_channels, 1, depth), depth
    groups = -(-depth // group_size)
    padded = np.zeros((out_channels, groups * group_size))
    padded[:, :depth] = weights
    return padded.reshape(out_channels, groups, group_size), group_size


def _exact_trits(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Recover trits and scales from weights holding at most {-s, 0, +s} per group."""
    magnitudes = np.abs(groups)
    scales = magnitudes.max(axis=2)
    nonzero = magnitudes > 0
    reference = np.broadcast_to(scales[..., None], groups.shape)
    if not np.all(np.abs(magnitudes - reference)[nonzero] <= EXACT_TOLERANCE * reference[nonzero]):
        return None
    return np.sign(groups).astype(np.int8), scales


def ternarize(weights: np.ndarray, method: str, granularity: str, group_size: int):
    """Ternarize [O, K] float weights.

    Returns (trits int8 [O, K], scales float64 [O or 1, G], group_size, method used).
    `absmean` is BitNet b1.58 (s = mean|W|, t = clip(round(W / s), -1, 1));
    `twn` keeps weights above 0.7 mean|W| and sets s to the mean kept magnitude;
    `exact` recovers weights that already hold {-s, 0, +s}; `auto` is `exact`
    where that works and `twn` elsewhere.
    """
    out_channels, depth = weights.shape
    groups, size = _group_view(weights, granularity, group_size)
    # Means are over the real weights of each group: the zero padding of a short
    # last group must not lower its scale or its twn threshold.
    counts = _group_view(np.ones_like(weights), granularity, group_size)[0].sum(axis=2)

    exact = _exact_trits(groups) if method in ("auto", "exact") else None
    if exact is not None:
        trits, scales = exact
        used = "exact"
    elif method == "exact":
        raise BonsaiError("weights are not ternary: some scale group contains values other than {-s, 0, +s}")
    elif method == "absmean":
        scales = np.abs(groups).sum(axis=2) / counts
        safe = np.where(scales > 0, scales, 1.0)
        trits = np.clip(round_half_away(groups / safe[..., None]), -1, 1).astype(np.int8)
        used = "absmean"
    else:
        threshold = 0.7 * (np.abs(groups).sum(axis=2) / counts)[..., None]
        trits = (np.sign(groups) * (np.abs(groups) > threshold)).astype(np.int8)
        kept = np.abs(trits).sum(axis=2)
        scales = np.where(kept > 0, (np.abs(groups) * np.abs(trits)).sum(axis=2) / np.maximum(kept, 1), 0.0)
        used = "twn"

    trits = trits.reshape(groups.shape[0], -1)
    if granularity == "per-tensor":
        trits = trits.reshape(out_channels, -1)
    trits = trits[:, :depth] if granularity == "group" else trits.reshape(out_channels, depth)
    return np.ascontiguousarray(trits), scales.astype(np.float64), size, used


def int8_weights(weights: np.ndarray):
    """Quantize [O, K] weights to int8, symmetric per output channel."""
    scales = np.abs(weights).max(axis=1, keepdims=True) / 127.0
    safe = np.where(scales > 0, scales, 1.0)
    values = np.clip(round_half_away(weights / safe), -127, 127).astype(np.int8)
    return values, scales, weights.shape[1]


def choose_granularity(options: QuantOptions, weights: np.ndarray) -> str:
    return choose_layout(options, weights)[0]


def choose_layout(options: QuantOptions, weights: np.ndarray, model_group_size: int | None = None) -> tuple[str, int]:
    """Pick the scale granularity and group size of [O, K] weights.

    An explicit --granularity wins. With auto, the cheapest layout in which
    every scale group contains only -s, 0 and +s is chosen, so exported
    ternary weights keep their exact values. The order is per tensor, per
    channel, then groups of the size the model file gives
    (`model_group_size`), of --group-size, and of EXACT_GROUP_SIZES. Other
    weights get per-channel scales in long rows and one per-tensor scale in
    short ones.
    """
    if options.granularity != "auto":
        return options.granularity, options.group_size
    sizes = dict.fromkeys(size for size in (model_group_size, options.group_size, *EXACT_GROUP_SIZES)
                          if size and size < weights.shape[1])
    layouts = [("per-tensor", options.group_size), ("per-channel", options.group_size)]
    layouts += [("group", size) for size in sizes]
    if options.method in ("auto", "exact"):
        for granularity, size in layouts:
            if _exact_trits(_group_view(weights, granularity, size)[0]) is not None:
                return granularity, size
    if weights.shape[1] >= AUTO_PER_CHANNEL_MIN_WEIGHTS:
        return "per-channel", options.group_size
    return "per-tensor", options.group_size


def quantize_weights(node: Node, options: QuantOptions) -> None:
    """Fill node.quant with the weight values, scales and their dequantized float copy."""
    out_channels = node.weights.shape[0]
    matrix = node.weights.reshape(out_channels, -1)
    if not np.all(np.isfinite(matrix)) or not np.all(np.isfinite(node.bias)):
        raise BonsaiError(f"node '{node.name}': weights or bias contain NaN or infinite values; fix the model")

    if node.name in options.int8_layers or options.weights == "int8":
        values, scales, size = int8_weights(matrix)
        fmt, granularity, used = "int8", "per-channel", "symmetric"
    else:
        granularity, group_size = choose_layout(options, matrix, node.attrs.get("group_size"))
        try:
            values, scales, size, used = ternarize(matrix, options.method, granularity, group_size)
        except BonsaiError as error:
            raise BonsaiError(f"node '{node.name}': {error}; use --method absmean or twn") from error
        fmt = "ternary"

    scale_matrix = np.broadcast_to(scales, (out_channels, scales.shape[1]))
    expanded = np.repeat(scale_matrix, size, axis=1)[:, :matrix.shape[1]]
    dequantized = values.astype(np.float64) * expanded
    error = np.sqrt(np.mean((dequantized - matrix) ** 2) / max(np.mean(matrix ** 2), 1e-30))
    node.quant.update(
        format=fmt, values=values, scales=scales, group_size=size, granularity=granularity,
        method=used, dequantized=dequantized.reshape(node.weights.shape), weight_error=float(error),
    )


# -- activations --------------------------------------------------------------


def qparams_from_range(low: float, high: float) -> QParams:
    """Affine int8 parameters covering [low, high], widened to include 0."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low < 1e-12:
        high = low + 1.0
    scale = (high - low) / 255.0
    zero_point = int(np.clip(round_half_away(-128 - low / scale), -128, 127))
    return QParams(float(scale), zero_point)


def synthetic_calibration(graph: Graph) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(SYNTHETIC_SEED)
    return [[rng.standard_normal(graph.tensors[name].logical_shape) for name in graph.inputs]
            for _ in range(SYNTHETIC_SAMPLES)]


def collect_ranges(graph: Graph, samples: list[list[np.ndarray]]) -> dict[str, tuple[float, float]]:
    ranges: dict[str, tuple[float, float]] = {}
    for sample in samples:
        physical = [graph.tensors[name].to_physical(array) for name, array in zip(graph.inputs, sample)]
        for name, value in run_float(graph, physical).items():
            low, high = float(value.min()), float(value.max())
            if not (math.isfinite(low) and math.isfinite(high)):
                raise BonsaiError(f"calibration: tensor '{name}' takes NaN or infinite values; check the model's "
                                  "weights and the calibration samples for NaN, infinity or overflow")
            if name in ranges:
                low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
            ranges[name] = (low, high)
    return ranges


# -- integer parameters ------------------------------------------------------


def fixed_point(real: np.ndarray, bias_real: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Choose one shift so the largest multiplier lies in [2**30, 2**31).

    Returns int64 multipliers round(real * 2**shift) and the shift. The
    shift is lowered when a bias (already divided by the output scale)
    would not fit in 62 bits.
    """
    largest = float(np.max(np.abs(real))) if real.size else 0.0
    shift = 31 if largest == 0.0 else 30 - math.floor(math.log2(largest))
    shift = min(shift, 62)
    if bias_real is not None and bias_real.size:
        biggest_bias = float(np.max(np.abs(bias_real)))
        while shift > 1 and biggest_bias * 2.0 ** shift >= 2.0 ** 61:
            shift -= 1
    if shift < 1:
        raise BonsaiError(f"requantization multiplier {largest:g} is too large for a 32-bit fixed-point value")
    multipliers = round_half_away(real * 2.0 ** shift).astype(np.int64)
    if multipliers.size and np.max(np.abs(multipliers)) >= 2 ** 31:
        shift -= 1
        multipliers = round_half_away(real * 2.0 ** shift).astype(np.int64)
    return multipliers, shift


def activation_limits(node: Node, out: QParams) -> tuple[int, int]:
    activation = node.attrs.get("activation")
    if activation is None:
        return -128, 127
    _, low, high = activation
    act_min = -128 if math.isinf(low) else int(np.clip(out.zero_point + round_half_away(low / out.scale), -128, 127))
    act_max = 127 if math.isinf(high) else int(np.clip(out.zero_point + round_half_away(high / out.scale), -128, 127))
    return act_min, act_max


def weighted_params(node: Node, x: QParams, out: QParams) -> None:
    quant = node.quant
    out_channels = quant["values"].shape[0]
    scale_matrix = np.broadcast_to(quant["scales"], (out_channels, quant["scales"].shape[1]))
    real = scale_matrix * x.scale / out.scale
    bias_real = node.bias / out.scale
    multiplier_matrix, shift = fixed_point(real, bias_real)
    act_min, act_max = activation_limits(node, out)
    # One multiplier serves every weight only when there is one scale: a single
    # output channel with several group scales keeps all of them.
    stored = multiplier_matrix[:1, :1] if quant["scales"].size == 1 else multiplier_matrix
    quant.update(
        multiplier_matrix=multiplier_matrix, multipliers=stored.reshape(-1).astype(np.int32), shift=shift,
        bias_fixed=round_half_away(bias_real * 2.0 ** shift).astype(np.int64),
        input_zero_point=x.zero_point, output_zero_point=out.zero_point, act_min=act_min, act_max=act_max,
    )


def add_params(node: Node, a: QParams, b: QParams, out: QParams) -> None:
    multipliers, shift = fixed_point(np.array([a.scale / out.scale, b.scale / out.scale]))
    act_min, act_max = activation_limits(node, out)
    node.quant.update(
        a_multiplier=int(multipliers[0]), b_multiplier=int(multipliers[1]), shift=shift,
        a_zero_point=a.zero_point, b_zero_point=b.zero_point, output_zero_point=out.zero_point,
        act_min=act_min, act_max=act_max,
    )


def lut_table(node: Node, x: QParams, out: QParams) -> np.ndarray:
    function = lut_function(node.attrs["function"], node.attrs["params"])
    q = np.arange(-128, 128)
    y = function((q - x.zero_point) * x.scale)
    return np.clip(round_half_away(y / out.scale) + out.zero_point, -128, 127).astype(np.int8)


def exp_table(x: QParams) -> np.ndarray:
    """exp(-d * input_scale) in Q16 for d = 0..255, the softmax table."""
    return round_half_away(np.exp(-np.arange(256) * x.scale) * 65536.0).astype(np.uint32)


SOFTMAX_QPARAMS = QParams(1.0 / 256.0, -128)


def take_recorded_qparams(graph: Graph) -> dict[str, QParams]:
    """Remove and return, by tensor name, the qparams the importer set from the model's quantization nodes.

    Pass-through ops keep their input's parameters, so parameters recorded
    after a Reshape or a pool also describe the tensor before it.
    """
    recorded = {name: tensor.qparams for name, tensor in graph.tensors.items() if tensor.qparams is not None}
    for tensor in graph.tensors.values():
        tensor.qparams = None
    for node in reversed(graph.nodes):
        if node.op in PASS_THROUGH_OPS and node.outputs[0] in recorded and node.inputs[0] not in recorded:
            recorded[node.inputs[0]] = recorded[node.outputs[0]]
    return recorded


def tensors_needing_ranges(graph: Graph) -> list[str]:
    """List the tensors whose int8 parameters come from a value range: inputs and requantized outputs."""
    produced = [node.outputs[0] for node in graph.nodes if node.op not in PASS_THROUGH_OPS + ("Softmax",)]
    return list(graph.inputs) + produced


def assign_qparams(graph: Graph, ranges: dict[str, tuple[float, float]],
                   recorded: dict[str, QParams] | None = None) -> None:
    """Set every tensor's qparams and every node's integer parameters.

    Parameters in `recorded` (from the model's QDQ or QONNX nodes) are used
    as given; the other tensors get theirs from `ranges`.
    """
    recorded = recorded or {}

    def chosen(name: str) -> QParams:
        return recorded[name] if name in recorded else qparams_from_range(*ranges[name])

    for name in graph.inputs:
        graph.tensors[name].qparams = chosen(name)

    for node in graph.nodes:
        out = graph.tensors[node.outputs[0]]
        x = graph.tensors[node.inputs[0]].qparams
        if node.op in PASS_THROUGH_OPS:
            out.qparams = x
        elif node.op == "Softmax":
            out.qparams = SOFTMAX_QPARAMS
        else:
            out.qparams = chosen(out.name)

        if node.op in WEIGHTED_OPS:
            weighted_params(node, x, out.qparams)
        elif node.op == "Add":
            add_params(node, x, graph.tensors[node.inputs[1]].qparams, out.qparams)
        elif node.op == "Lut":
            node.quant["table"] = lut_table(node, x, out.qparams)
        elif node.op == "Softmax":
            node.quant["exp_table"] = exp_table(x)
        elif node.op == "Clamp":
            node.quant["act_min"], node.quant["act_max"] = activation_limits(node, out.qparams)
        elif node.op == "AveragePool":
            node.quant["input_zero_point"] = x.zero_point


def quantize(graph: Graph, options: QuantOptions, samples: list[list[np.ndarray]] | None) -> Graph:
    """Quantize weights and activations of `graph` in place and return it.

    samples: calibration inputs, each a list with one logical float array per
    graph input. None means the synthetic distribution, with a warning.
    Tensors whose qparams the importer set from the model's quantization
    nodes keep them; when every activation has them, samples are not used.
    """
    recorded = take_recorded_qparams(graph)
    options = replace(options, int8_layers=resolve_int8_layers(graph, options.int8_layers))
    unknown = options.int8_layers - {node.name for node in graph.nodes if node.op in WEIGHTED_OPS}
    if unknown:
        raise BonsaiError(f"--keep-int8: no Conv, Gemm or MatMul node named {', '.join(sorted(unknown))}; "
                          "give node names as 'bonsai-mcu inspect' lists them, or first, last")
    if options.weights not in PRECISIONS:
        raise BonsaiError(f"--weights {options.weights}: must be one of {', '.join(PRECISIONS)}")
    if options.weights == "float32" and options.int8_layers:
        raise BonsaiError("--keep-int8 with --weights float32: a model mixing int8 and float32 layers is not "
                          "supported; keep the whole model in float32 or drop --weights float32")
    if options.weights == "float32":
        # Weights keep their float values (run_float reads node.weights) and no
        # tensor gets int8 parameters, so no calibration is needed.
        for node in graph.nodes:
            if node.op in WEIGHTED_OPS:
                node.quant.update(format="float32", granularity="")
        return graph
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS:
            quantize_weights(node, options)

    needed = tensors_needing_ranges(graph)
    missing = [name for name in needed if name not in recorded]
    if not missing:
        log.info("every activation takes its int8 parameters from the model's quantization nodes; "
                 "calibration data is not needed%s", " and is not used" if samples is not None else "")
        assign_qparams(graph, {}, recorded)
        return graph
    if recorded:
        log.info("%d tensors take their int8 parameters from the model's quantization nodes; %d are calibrated",
                 len(needed) - len(missing), len(missing))
    if samples is None:
        log.warning(
            "no calibration data: activation ranges come from %d standard-normal samples, "
            "so accuracy will suffer; pass --calibration FILE with real inputs (.npy or .npz)",
            SYNTHETIC_SAMPLES,
        )
        samples = synthetic_calibration(graph)
    assign_qparams(graph, collect_ranges(graph, samples), recorded)
    return graph


def resolve_int8_layers(graph: Graph, names: set[str]) -> set[str]:
    """Replace the keywords first and last by the names of the first and last Conv, Gemm or MatMul nodes."""
    weighted = [node.name for node in graph.nodes if node.op in WEIGHTED_OPS]
    keywords = {"first": weighted[:1], "last": weighted[-1:]}
    resolved: set[str] = set()
    for name in names:
        resolved.update(keywords.get(name, [name]))
    return resolved
