"""Import of quantized ONNX formats: QDQ pairs, MatMulNBits and QONNX quantizers.

The importer passes every node that `FormatImporter.handles` accepts to
`FormatImporter.import_node`. Three families are read:

- QuantizeLinear -> DequantizeLinear pairs on activations (QDQ, as
  onnxruntime's quantize_static writes them). The pair is removed and its
  (scale, zero_point) is set on the IR tensor as `Tensor.qparams`; the
  quantize stage keeps such parameters instead of calibrating. uint8
  parameters become int8 ones with zero_point - 128. DequantizeLinear on a
  constant (quantized weights) is folded into float weights like any
  constant.
- com.microsoft MatMulNBits: block-quantized weights, imported exactly when
  every code is zero_point - 1, zero_point or zero_point + 1, and rejected
  with the reason otherwise. The Dense node it becomes records the block size
  in `attrs["group_size"]`, so the quantize stage keeps one scale per block.
- QONNX Quant (IntQuant) and BipolarQuant, as Brevitas exports them. On
  constant weights they fold to the float values they define: a 2-bit
  signed narrow-range Quant gives ternary weights and BipolarQuant binary
  ones, and both import without loss. An 8-bit Quant on an activation sets
  its qparams.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from .ir import QParams

log = logging.getLogger(__name__)

STANDARD_DOMAINS = ("", "ai.onnx")
MICROSOFT_DOMAIN = "com.microsoft"
# Brevitas writes its own domain in older releases; QONNX and FINN read all three.
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")
QONNX_QUANT_OPS = ("Quant", "IntQuant")

# Ops that, on an activation, leave its values for the next op (they only set its int8 parameters).
QUANTIZER_OPS = ("QuantizeLinear", "DequantizeLinear") + QONNX_QUANT_OPS

# Activation bit width the generated C computes in.
ACTIVATION_BITS = 8


def _is_integral(values: np.ndarray) -> bool:
    return bool(np.all(np.asarray(values) == np.round(np.asarray(values))))


def int8_qparams(scale: float, zero_point: int, unsigned: bool) -> QParams:
    """Return the int8 parameters of an int8 or uint8 quantization with the same real values.

    A uint8 code q is the value scale * (q - zero_point). The int8 code
    q - 128 is the same value with zero point zero_point - 128.
    """
    return QParams(float(scale), int(zero_point) - 128 if unsigned else int(zero_point))


# -- MatMulNBits ----------------------------------------------------------------------------


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack bit-packed codes along the last axis, lowest bits first: [..., bytes] -> [..., count]."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    mask = np.uint8((1 << bits) - 1)
    codes = (packed[..., None] >> shifts) & mask
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of unpack_codes: [..., count] codes -> [..., ceil(count * bits / 8)] bytes."""
    per_byte = 8 // bits
    count = codes.shape[-1]
    padded = np.zeros(codes.shape[:-1] + (-(-count // per_byte) * per_byte,), dtype=np.uint8)
    padded[..., :count] = codes
    grouped = padded.reshape(*codes.shape[:-1], -1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint8)


def matmul_nbits_trits(codes: np.ndarray, zero_points: np.ndarray, depth: int) -> np.ndarray:
    """Return codes - zero_point as int8 trits [N, depth], or raise ValueError saying which values are not ternary.

    codes: [N, blocks, block_size]; zero_points: [N, blocks]. Codes past
    `depth` pad the last block and are ignored.
    """
    levels = (codes.astype(np.float64) - zero_points[..., None]).reshape(codes.shape[0], -1)[:, :depth]
    ternary = np.isin(levels, (-1.0, 0.0, 1.0))
    if np.all(ternary):
        return levels.astype(np.int8)
    outside = np.unique(levels[~ternary])
    listed = ", ".join(f"{v:g}" for v in outside[:8]) + (", ..." if outside.size > 8 else "")
    rows = int(np.any(~ternary, axis=1).sum())
    raise ValueError(
        f"the weight codes are not ternary: code - zero_point takes the values {listed} in {rows} of "
        f"{codes.shape[0]} rows, and only -1, 0 and +1 map onto trits without loss; quantize the weights "
        "to three levels (zero_point - 1, zero_point, zero_point + 1), or give a float model to ternarize "
        "with --method"
    )


# -- QONNX quantizers -------------------------------------------------------------------------


def _qonnx_round(values: np.ndarray, mode: str) -> np.ndarray:
    """Round as the QONNX IntQuant rounding modes define (ROUND is half to even)."""
    mode = mode.upper()
    if mode == "ROUND":
        return np.round(values)
    if mode == "CEIL":
        return np.ceil(values)
    if mode == "FLOOR":
        return np.floor(values)
    if mode == "UP":
        return np.sign(values) * np.ceil(np.abs(values))
    if mode in ("DOWN", "ROUND_TO_ZERO"):
        return np.sign(values) * np.floor(np.abs(values))
    if mode == "HALF_UP":
        return np.sign(values) * np.floor(np.abs(values) + 0.5)
    if mode == "HALF_DOWN":
        return np.sign(values) * np.ceil(np.abs(values) - 0.5)
    raise ValueError(f"rounding_mode '{mode}' is not one of ROUND, CEIL, FLOOR, UP, DOWN, HALF_UP, HALF_DOWN")


def qonnx_int_range(signed: bool, narrow: bool, bits: int) -> tuple[int, int]:
    """Return the smallest and largest integer of a QONNX IntQuant."""
    if signed:
        return -(2 ** (bits - 1)) + (1 if narrow else 0), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - (2 if narrow else 1)


def qonnx_quant(x: np.ndarray, scale, zero_point, bits: int, signed: bool, narrow: bool,
                rounding_mode: str) -> np.ndarray:
    """Evaluate a QONNX IntQuant: clip x / scale + zero_point to the integer range, round, rescale."""
    low, high = qonnx_int_range(signed, narrow, bits)
    integers = np.clip(np.asarray(x, dtype=np.float64) / scale + zero_point, low, high)
    return (_qonnx_round(integers, rounding_mode) - zero_point) * scale


def bipolar_quant(x: np.ndarray, scale) -> np.ndarray:
    """Evaluate a QONNX BipolarQuant: +scale where x >= 0, -scale elsewhere."""
    return np.where(np.asarray(x, dtype=np.float64) >= 0.0, 1.0, -1.0) * scale


# -- the importer's side ----------------------------------------------------------------------


class FormatImporter:
    """Imports the quantization nodes of one model for an importer (bonsai_mcu.importer._Importer)."""

    def __init__(self, importer):
        self.importer = importer
        # ONNX name of a QuantizeLinear output -> the parameters its DequantizeLinear must repeat.
        self.quantized: dict[str, QParams] = {}

    def handles(self, node: onnx.NodeProto) -> bool:
        if node.domain in QONNX_DOMAINS:
            return node.op_type in QONNX_QUANT_OPS + ("BipolarQuant",)
        if node.domain == MICROSOFT_DOMAIN:
            return node.op_type in ("MatMulNBits", "QuantizeLinear", "DequantizeLinear")
        # The onnx reference evaluator that folds other constants implements
        # QuantizeLinear and DequantizeLinear only from opset 19 on, so this
        # module folds them on constants as well.
        return node.domain in STANDARD_DOMAINS and node.op_type in ("QuantizeLinear", "DequantizeLinear")

    def import_node(self, node: onnx.NodeProto) -> None:
        if node.op_type == "MatMulNBits":
            self.matmul_nbits(node)
        elif node.op_type in QONNX_QUANT_OPS:
            self.qonnx_quant(node)
        elif node.op_type == "BipolarQuant":
            self.bipolar_quant(node)
        elif node.input[0] in self.importer.consts:
            self.fold_linear_quantization(node)
        elif node.op_type == "QuantizeLinear":
            self.quantize_linear(node)
        else:
            self.dequantize_linear(node)

    # -- QDQ ---------------------------------------------------------------------------------

    def linear_qparams(self, node: onnx.NodeProto) -> QParams:
        """Read the per-tensor (scale, zero_point) of a QuantizeLinear or DequantizeLinear as int8 parameters."""
        importer = self.importer
        scale = np.asarray(importer.const(node, 1, "scale"), dtype=np.float64)
        zero_point = importer.optional_const(node, 2)
        if scale.size != 1:
            raise importer.problem(node, f"per-axis scale of {scale.size} values on an activation; the "
                                         "generated C quantizes each activation tensor with one scale")
        if not scale.reshape(-1)[0] > 0:
            raise importer.problem(node, f"scale {scale.reshape(-1)[0]:g} is not positive")

        attrs = importer.attrs(node)
        if zero_point is not None:
            dtype = zero_point.dtype
        elif attrs.get("output_dtype"):
            dtype = helper.tensor_dtype_to_np_dtype(attrs["output_dtype"])
        else:
            dtype = np.dtype(np.uint8)
        if dtype not in (np.int8, np.uint8):
            raise importer.problem(node, f"{np.dtype(dtype).name} quantization of an activation; only int8 "
                                         "and uint8 activations are supported")
        value = 0 if zero_point is None else int(np.asarray(zero_point).reshape(-1)[0])
        return int8_qparams(scale.reshape(-1)[0], value, unsigned=dtype == np.uint8)

    def quantize_linear(self, node: onnx.NodeProto) -> None:
        importer = self.importer
        x = importer.value(node)
        consumers = [n for n in importer.model.graph.node if node.output[0] in n.input]
        others = sorted({n.op_type for n in consumers if n.op_type != "DequantizeLinear"})
        if others or node.output[0] in importer.graph_outputs:
            used_by = ", ".join(others) if others else "the graph output"
            raise importer.problem(node, f"its integer output feeds {used_by}; only QuantizeLinear -> "
                                         "DequantizeLinear pairs (QDQ) are supported on activations")
        self.quantized[node.output[0]] = self.linear_qparams(node)
        self.alias(node.input[0], node.output[0], x.name)

    def dequantize_linear(self, node: onnx.NodeProto) -> None:
        importer = self.importer
        source = node.input[0]
        if source not in self.quantized:
            raise importer.problem(node, f"input '{source}' does not come from a QuantizeLinear; integer "
                                         "activations are supported only inside QuantizeLinear -> "
                                         "DequantizeLinear pairs")
        qparams = self.linear_qparams(node)
        expected = self.quantized[source]
        if (qparams.scale, qparams.zero_point) != (expected.scale, expected.zero_point):
            raise importer.problem(node, f"scale {qparams.scale:g} and zero point {qparams.zero_point} differ "
                                         f"from its QuantizeLinear's ({expected.scale:g}, {expected.zero_point})")
        tensor = importer.tensors[importer.env[source].tensor]
        self.record(tensor, qparams)
        self.alias(source, node.output[0], tensor.name)

    def record(self, tensor, qparams: QParams) -> None:
        # A later pair on the same IR tensor wins: after a fused activation it
        # describes the values the tensor finally contains.
        tensor.qparams = qparams

    def alias(self, onnx_input: str, onnx_output: str, tensor: str) -> None:
        """Bind onnx_output to the IR tensor of onnx_input, counting the input's other uses as its own.

        The importer fuses a ReLU into the op before it only when that op's
        output has one use. Behind a quantizer, the other uses of the
        quantizer's input count as well.
        """
        importer = self.importer
        others = importer.consumer_count.get(onnx_input, 0) - 1 + (onnx_input in importer.graph_outputs)
        importer.consumer_count[onnx_output] = importer.consumer_count.get(onnx_output, 0) + others
        importer.bind(onnx_output, tensor)

    def fold_linear_quantization(self, node: onnx.NodeProto) -> None:
        """Evaluate a QuantizeLinear or DequantizeLinear on constants: per tensor, per axis or per block."""
        importer = self.importer
        attrs = importer.attrs(node)
        x = np.asarray(importer.consts[node.input[0]])
        scale = np.asarray(importer.const(node, 1, "scale"), dtype=np.float64)
        zero_point = importer.optional_const(node, 2)
        offset = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point, dtype=np.float64)
        # One scale is per tensor whatever its shape: onnxruntime's int32 biases
        # come with a scale of shape [1] and a scalar zero point.
        if scale.size == 1 and offset.size == 1:
            scale, offset = scale.reshape(()), offset.reshape(())
        if scale.size == 0 or offset.shape != scale.shape or (scale.size > 1 and x.ndim == 0):
            raise importer.problem(node, f"scale of shape {list(scale.shape)} and zero point of shape "
                                         f"{list(offset.shape)} do not fit the input of shape {list(x.shape)}")
        if scale.size > 1:
            axis = attrs.get("axis", 1) % x.ndim
            block_size = int(attrs.get("block_size", 0))
            if block_size < 0 or (not block_size and scale.size != x.shape[axis]) or (
                    block_size and (scale.ndim != x.ndim or scale.shape[axis] * block_size < x.shape[axis])):
                raise importer.problem(node, f"scale of shape {list(scale.shape)} does not fit axis {axis} "
                                             f"of the input of shape {list(x.shape)}")
            if block_size:
                scale = np.repeat(scale, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
                offset = np.repeat(offset, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
            else:
                shape = [1] * x.ndim
                shape[axis] = scale.size
                scale, offset = scale.reshape(shape), offset.reshape(shape)
        if node.op_type == "DequantizeLinear":
            importer.consts[node.output[0]] = (x.astype(np.float64) - offset) * scale
            return

        if zero_point is not None:
            dtype = zero_point.dtype
        elif attrs.get("output_dtype"):
            dtype = helper.tensor_dtype_to_np_dtype(attrs["output_dtype"])
        else:
            dtype = np.dtype(np.uint8)
        if not np.issubdtype(dtype, np.integer):
            raise importer.problem(node, f"quantization to {np.dtype(dtype).name} is not supported")
        info = np.iinfo(dtype)
        # ONNX QuantizeLinear rounds half to even, as np.round does.
        rounded = np.clip(np.round(x.astype(np.float64) / scale) + offset, info.min, info.max)
        importer.consts[node.output[0]] = rounded.astype(dtype)

    # -- MatMulNBits --------------------------------------------------------------------------

    def matmul_nbits(self, node: onnx.NodeProto) -> None:
        importer = self.importer
        attrs = importer.attrs(node)
        missing = [name for name in ("K", "N", "block_size") if name not in attrs]
        if missing:
            raise importer.problem(node, f"required attribute {', '.join(missing)} is missing")
        depth, out_features, block_size = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
        bits = int(attrs.get("bits", 4))
        if bits not in (2, 4, 8):
            raise importer.problem(node, f"bits={bits} is not supported; only 2-, 4- and 8-bit codes are read "
                                         "(ternary weights fit in bits=2)")
        if len(node.input) > 4 and node.input[4]:
            raise importer.problem(node, "the deprecated g_idx input is not supported")
        if attrs.get("weight_prepacked", 0):
            raise importer.problem(node, "prepacked weights (weight_prepacked=1 or 2) are in a layout of one "
                                         "execution provider; export the model with weight_prepacked=0")

        blocks = -(-depth // block_size)
        packed = importer.const(node, 1, "B")
        if packed.dtype != np.uint8 or packed.size != out_features * blocks * block_size * bits // 8:
            raise importer.problem(node, f"B of type {packed.dtype} and shape {list(packed.shape)} does not "
                                         f"hold {out_features} x {blocks} blocks of {block_size} {bits}-bit codes")
        codes = unpack_codes(packed.reshape(out_features, blocks, -1), bits, block_size)
        scales = np.asarray(importer.const(node, 2, "scales"), dtype=np.float64)
        if scales.size != out_features * blocks:
            raise importer.problem(node, f"scales has {scales.size} values for {out_features} x {blocks} blocks")
        scales = scales.reshape(out_features, blocks)
        zero_points = self.matmul_nbits_zero_points(node, out_features, blocks, bits)

        try:
            trits = matmul_nbits_trits(codes, zero_points, depth)
        except ValueError as error:
            raise importer.problem(node, str(error)) from None
        weights = trits * np.repeat(scales, block_size, axis=1)[:, :depth]
        bias = importer.optional_const(node, 5)
        bias = np.zeros(out_features) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
        if bias.shape != (out_features,):
            raise importer.problem(node, f"bias has {bias.size} values for N={out_features}")

        importer.dense(node, importer.value(node), np.ascontiguousarray(weights), bias)
        importer.nodes[-1].attrs["group_size"] = block_size

    def matmul_nbits_zero_points(self, node, out_features: int, blocks: int, bits: int) -> np.ndarray:
        """Return zero points [N, blocks] as float64: packed uint8, unpacked float, or the default 2**(bits - 1)."""
        importer = self.importer
        zero_points = importer.optional_const(node, 3)
        if zero_points is None:
            return np.full((out_features, blocks), float(2 ** (bits - 1)))
        if zero_points.dtype == np.uint8:
            row_bytes = -(-blocks * bits // 8)
            if zero_points.size != out_features * row_bytes:
                raise importer.problem(node, f"packed zero_points has {zero_points.size} bytes; expected "
                                             f"{out_features} x {row_bytes}")
            rows = zero_points.reshape(out_features, row_bytes)
            return unpack_codes(rows, bits, blocks).astype(np.float64)
        if zero_points.size != out_features * blocks:
            raise importer.problem(node, f"zero_points has {zero_points.size} values for {out_features} x "
                                         f"{blocks} blocks")
        return np.asarray(zero_points, dtype=np.float64).reshape(out_features, blocks)

    # -- QONNX --------------------------------------------------------------------------------

    def qonnx_quant(self, node: onnx.NodeProto) -> None:
        importer = self.importer
        attrs = importer.attrs(node)
        signed, narrow = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
        mode = attrs.get("rounding_mode", "ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        scale = np.asarray(importer.const(node, 1, "scale"), dtype=np.float64)
        zero_point = np.asarray(importer.const(node, 2, "zeropt"), dtype=np.float64)
        bits = np.asarray(importer.const(node, 3, "bitwidth"), dtype=np.float64)
        if bits.size != 1 or not _is_integral(bits) or bits.reshape(-1)[0] < 1:
            raise importer.problem(node, f"bitwidth {bits.reshape(-1).tolist()} is not one positive integer")
        bits = int(bits.reshape(-1)[0])

        if node.input[0] in importer.consts:
            try:
                values = qonnx_quant(importer.consts[node.input[0]], scale, zero_point, bits, signed, narrow, mode)
            except ValueError as error:
                raise importer.problem(node, str(error)) from None
            low, high = qonnx_int_range(signed, narrow, bits)
            if low - zero_point.max() < -1 or high - zero_point.min() > 1:
                log.warning("%s node '%s': %d-bit weights have more than the three levels -s, 0, +s, so "
                            "ternarizing them loses precision; keep the layer in int8 with --keep-int8 to "
                            "avoid that", node.op_type, node.name or node.output[0], bits)
            importer.consts[node.output[0]] = values
            return

        x = importer.value(node)
        if scale.size != 1 or zero_point.size != 1:
            raise importer.problem(node, "per-channel activation quantization; the generated C quantizes each "
                                         "activation tensor with one scale")
        if bits != ACTIVATION_BITS:
            raise importer.problem(node, f"{bits}-bit activations; the generated C computes activations in "
                                         f"{ACTIVATION_BITS} bits: export the activation quantizers with "
                                         f"bit_width={ACTIVATION_BITS}")
        if not _is_integral(zero_point) or not scale.reshape(-1)[0] > 0:
            raise importer.problem(node, f"scale {scale.reshape(-1)[0]:g} and zero point "
                                         f"{zero_point.reshape(-1)[0]:g} are not a positive scale and an integer")
        qparams = int8_qparams(scale.reshape(-1)[0], int(zero_point.reshape(-1)[0]), unsigned=not signed)
        if not -128 <= qparams.zero_point <= 127:
            raise importer.problem(node, f"zero point {zero_point.reshape(-1)[0]:g} lies outside the "
                                         f"{'signed' if signed else 'unsigned'} 8-bit range")
        self.record(x, qparams)
        self.alias(node.input[0], node.output[0], x.name)

    def bipolar_quant(self, node: onnx.NodeProto) -> None:
        importer = self.importer
        scale = np.asarray(importer.const(node, 1, "scale"), dtype=np.float64)
        if node.input[0] not in importer.consts:
            raise importer.problem(node, "binary activations are not supported; the generated C computes "
                                         f"activations in {ACTIVATION_BITS} bits")
        importer.consts[node.output[0]] = bipolar_quant(importer.consts[node.input[0]], scale)
