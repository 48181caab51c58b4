"""Kernel selection: which C kernel runs each layer, with its weight layout, scratch and reason.

The portable reference kernels (templates/kernels/conv2d.c.j2, dense.c.j2) define what every
layer computes. The kernels chosen here compute the same int8 outputs, bit for bit, faster:

- dense_lut: fully connected layers. The five trits of a packed byte index a table of 243
  partial sums of five inputs. The table is built once per input vector and shared by all
  output rows, so one byte load, one table load and one add replace five multiply-accumulates.
- conv2d_sad (DSP extension): convolutions with one group. Input patches are copied, a block of
  pixels at a time, as bytes u = x + 128; trits become two byte masks per weight and USADA8
  sums |u - a| + |u - b| over four weights in one instruction, which equals 2 t u plus a
  constant of the row. A 1x1 convolution runs in place.
- depthwise_sad (DSP extension): depthwise convolutions up to 3x4 kernels. Four channels at a
  time are copied into padded planes; each kernel row of an output is one unaligned word load
  and two USADA8. Runs in place.

- dense_rows: fully connected layers when the tables do not fit: no scratch, one table
  lookup per packed byte of the usual weight stream.
- pool_global: average pooling over the whole input.

Each choice carries its scratch size in bytes (the C kernels export the same figure through
NAME_<kernel>_scratch_size) and whether its output may share its input's buffer. Scratch
may not make the arena larger than the plain tensor-by-tensor plan needs, plus
`extra_scratch` bytes: a kernel that does not fit gets a smaller block or gives way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ir import Graph, Node
from .targets import Target

TRITS_PER_BYTE = 5
# Table entries of dense_lut: 3**5 partial sums per group of five inputs.
LUT_ENTRIES = 243
# Groups of five inputs whose tables one pass of dense_lut keeps; each pass loads and stores
# the int32 accumulators of all outputs once.
LUT_PASS_GROUPS = 8
# A table of a group costs about 145 (Cortex-M4) to 300 (RV32) instructions to build and saves
# about 25 per output against the reference kernel's trit-by-trit decoding. So it pays from 2
# outputs on, at the price of scratch RAM (see lut_scratch).
LUT_MIN_OUTPUTS = 2
# Flash of dense_rows' table of the 5 trits of every packed byte; smaller layers keep the
# reference kernel, which needs no table.
ROWS_TABLE_BYTES = 243 * TRITS_PER_BYTE
# The portable dense_lut stores table entries biased by this value so that every 16-bit lane
# stays non-negative and two entries can be written with one 32-bit addition.
LUT_TABLE_BIAS = 1024

# conv2d_sad copies patches of at most this many bytes per block (pixels x padded patch
# length). An in-place 1x1 convolution's block replaces a second tensor, so it gets twice the
# bytes of other convolutions.
SAD_BLOCK_BYTES = 1280
# Patch lengths are padded to whole 32-bit words.
SAD_PATCH_ALIGN = 4
# conv2d_sad sums patches of this many pixels at once (one 5-register load per word).
SAD_LANES = 5
# Mask buffers hold 4 bytes of slack before and 8 after each row: the decoder writes whole
# 8-byte table entries at a byte offset.
SAD_MASK_SLACK = 12
# depthwise_sad works on this many channels per pass: one 32-bit load of NHWC input.
DEPTHWISE_CHANNELS = 4

DSP = "dsp"
PORTABLE = "portable"


class Unsupported(Exception):
    """A layer that a fast kernel cannot run; the message is the reason shown in the report."""


@dataclass
class KernelChoice:
    """The kernel of one layer.

    kernel is the template name under templates/kernels/ ("" for ops that keep their usual
    kernel), variant "dsp" or "portable", reason a sentence for the report. scratch is in
    bytes. in_place means the output may share the input's buffer. data contains the layout
    and folded constants that codegen writes out.
    """

    kernel: str
    variant: str
    reason: str
    scratch: int = 0
    in_place: bool = False
    data: dict = field(default_factory=dict)

    @property
    def is_fast(self) -> bool:
        return self.kernel not in ("", "conv2d", "dense", "pool")


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


# -- requantization folded for the fast kernels --------------------------------


def single_group(node: Node) -> None:
    """Raise Unsupported unless every output row has one scale (per-tensor, per-channel, or one group)."""
    quant = node.quant
    if quant["multiplier_matrix"].shape[1] != 1:
        groups = quant["multiplier_matrix"].shape[1]
        raise Unsupported(f"{groups} scale groups per output row: the fast kernels take one scale per row")


def row_multipliers(node: Node) -> np.ndarray:
    return np.asarray(node.quant["multiplier_matrix"][:, 0], dtype=np.int64)


def fold_lut_bias(node: Node, trits: np.ndarray, table_offset: int) -> list[int]:
    """Return the 64-bit bias of dense_lut: the reference bias with the input zero point moved out.

    The kernel sums t * x over raw inputs, plus table_offset per group of five; the reference
    sums t * (x - zero_point). The difference, -zero_point * sum(t) - table_offset * groups,
    times the row's multiplier, moves into the bias, so the 64-bit total is the reference's.
    """
    quant = node.quant
    multipliers = row_multipliers(node)
    groups = -(-trits.shape[1] // TRITS_PER_BYTE)
    row_sums = trits.astype(np.int64).sum(axis=1)
    folded = []
    for o in range(trits.shape[0]):
        correction = -quant["input_zero_point"] * int(row_sums[o]) - table_offset * groups
        folded.append(int(quant["bias_fixed"][o]) + int(multipliers[o]) * correction)
    check_int64(folded, node, "folded bias")
    return folded


def check_int64(values, node: Node, what: str) -> None:
    if values and max(abs(int(v)) for v in values) >= 2 ** 62:
        raise Unsupported(f"{what} of node '{node.name}' needs more than 62 bits")


def fold_sad_requant(node: Node, trits: np.ndarray, junk: int, max_sum: int) -> dict:
    """Fold the reference requantization into the constants of the SAD kernels.

    For row o with trits t over K weights plus `junk` padding bytes whose masks give 255 each,
    the kernels compute S = sum |u - a| + |u - b| = 2 sum t u + C_o with u = x + 128 and
    C_o = 255 (zeros + junk) + 510 (minus ones). The reference value v = bias + m acc with
    acc = sum t (x - z) = (S - C_o) / 2 - (128 + z) sum t, so 2 v = 2 bias - m K_o + m S with
    K_o = C_o + 2 (128 + z) sum t. The kernels evaluate
        W = B_o + m * (S << pre_shift),   out = saturate((W >> 32) >> post_shift)
    with B_o = (2 bias - m K_o) 2^pre_shift + 2^(s - 1) + z_out 2^s and s = shift + 1 +
    pre_shift = 32 + post_shift. That is floor((2 v + 2^(shift)) / 2^(shift + 1)) + z_out, the
    reference's rounding half away from zero except at an exact tie of a negative v. The
    kernels correct such a tie (W below tie_limit, low s bits zero) when check_ties is set.
    With act_min >= z_out such a tie saturates to act_min either way, so no check is needed.
    max_sum bounds S.
    """
    quant = node.quant
    shift = int(quant["shift"]) + 1
    pre_shift = max(0, 32 - shift)
    if max_sum << pre_shift >= 2 ** 31:
        raise Unsupported(f"requantization shift {quant['shift']} is too small for 32-bit sums")
    total_shift = shift + pre_shift
    post_shift = total_shift - 32
    if post_shift > 30:
        raise Unsupported(f"requantization shift {quant['shift']} is too large")
    multipliers = row_multipliers(node)
    zero_point, out_zero = int(quant["input_zero_point"]), int(quant["output_zero_point"])
    t = trits.astype(np.int64)
    zeros = (t == 0).sum(axis=1) + junk
    minus = (t == -1).sum(axis=1)
    sums = t.sum(axis=1)
    half = 1 << (total_shift - 1)
    bias = []
    for o in range(trits.shape[0]):
        constant = 255 * int(zeros[o]) + 510 * int(minus[o]) + 2 * (128 + zero_point) * int(sums[o])
        doubled = 2 * int(quant["bias_fixed"][o]) - int(multipliers[o]) * constant
        bias.append(doubled * (1 << pre_shift) + half + out_zero * (1 << total_shift))
    largest_product = int(np.max(np.abs(multipliers))) * (max_sum << pre_shift) if len(multipliers) else 0
    if max(abs(b) for b in bias) + largest_product >= 2 ** 63:
        raise Unsupported(f"folded bias of node '{node.name}' overflows 64 bits")
    return {
        "bias": bias, "multipliers": [int(m) for m in multipliers], "per_tensor": int(quant["multipliers"].size == 1),
        "pre_shift": pre_shift, "post_shift": post_shift,
        "check_ties": int(quant["act_min"] < out_zero),
        "tie_limit": half + out_zero * (1 << total_shift),
        "act_min": int(quant["act_min"]), "act_max": int(quant["act_max"]),
    }


# -- weight layouts -----------------------------------------------------------------


def lut_layout(trits: np.ndarray) -> tuple[np.ndarray, int]:
    """Pack [O, K] trits for dense_lut: rows padded to whole bytes, bytes ordered [pass][o][group].

    Returns the packed bytes and the number of groups (bytes) per row. A pass covers
    LUT_PASS_GROUPS consecutive groups of every row (fewer in the last pass), so the kernel
    reads one pass with a single pointer that moves forward.
    """
    rows, depth = trits.shape
    groups = -(-depth // TRITS_PER_BYTE)
    padded = np.zeros((rows, groups * TRITS_PER_BYTE), dtype=np.int64)
    padded[:, :depth] = trits
    digits = (padded + 1).reshape(rows, groups, TRITS_PER_BYTE)
    packed = (digits * np.array([1, 3, 9, 27, 81])).sum(axis=2).astype(np.uint8)
    passes = [packed[:, start:start + LUT_PASS_GROUPS].reshape(-1) for start in range(0, groups, LUT_PASS_GROUPS)]
    return np.concatenate(passes), groups


def lut_scratch(variant: str, depth: int, out_features: int) -> int:
    """Bytes of dense_lut scratch: the tables of one pass, then the int32 accumulators.

    Mirrors NAME_dense_lut_scratch_size in templates/kernels/dense_lut*.c.j2.
    """
    groups = -(-depth // TRITS_PER_BYTE)
    per_pass = min(LUT_PASS_GROUPS, groups)
    if variant == DSP:
        tables = -(-per_pass // 2) * LUT_ENTRIES * 4
    else:
        tables = per_pass * (LUT_ENTRIES + 1) * 2
    return align_up(tables, 4) + 4 * out_features


def sad_patch_bytes(depth: int) -> int:
    return align_up(depth, SAD_PATCH_ALIGN)


def sad_scratch(depth: int, block_pixels: int) -> int:
    """Bytes of conv2d_sad scratch: the patch block, then the A and B mask rows.

    Mirrors NAME_conv2d_sad_scratch_size in templates/kernels/conv2d_sad.c.j2.
    """
    patch = sad_patch_bytes(depth)
    return block_pixels * patch + 2 * (patch + SAD_MASK_SLACK)


def depthwise_plane(attrs: dict) -> tuple[int, int]:
    """Return (rows, row stride) of one padded input plane of depthwise_sad.

    The stride covers the last window's four-byte load and is at least 8, because the bias
    of the channel sits in the 8 bytes before the plane (see the kernel).
    """
    pad_top, pad_left, pad_bottom, pad_right = attrs["pads"]
    rows = max(attrs["in_h"] + pad_top + pad_bottom, (attrs["out_h"] - 1) * attrs["strides"][0] + attrs["kernel"][0])
    needed = max(attrs["in_w"] + pad_left + pad_right, (attrs["out_w"] - 1) * attrs["strides"][1] + 4)
    return rows, max(8, align_up(needed, 4))


def depthwise_scratch(attrs: dict, kernel_h: int) -> int:
    """Bytes of depthwise_sad scratch: per channel of a pass, 8 bias bytes then a padded plane;
    then the mask bytes of the pass. Mirrors NAME_depthwise_sad_scratch_size."""
    rows, stride = depthwise_plane(attrs)
    kernel_w = attrs["kernel"][1]
    masks = 2 * align_up(DEPTHWISE_CHANNELS * kernel_h * kernel_w + SAD_MASK_SLACK, 4)
    return DEPTHWISE_CHANNELS * (8 + rows * stride) + masks


# -- selection ----------------------------------------------------------------------


def ternary_weights(node: Node) -> np.ndarray:
    quant = node.quant
    if quant.get("format") != "ternary":
        raise Unsupported(f"{quant.get('format', 'float')} weights: the fast kernels read packed trits")
    single_group(node)
    return np.asarray(quant["values"], dtype=np.int8).reshape(quant["values"].shape[0], -1)


def choose_dense(node: Node, graph: Graph, variants: list[str], free: int) -> KernelChoice:
    trits = ternary_weights(node)
    out_features, depth = trits.shape
    variant = DSP if DSP in variants else PORTABLE
    scratch = lut_scratch(variant, depth, out_features)
    if out_features < LUT_MIN_OUTPUTS or scratch > free:
        why = (f"{out_features} output shares each table" if out_features < LUT_MIN_OUTPUTS else
               f"the tables need {scratch:,} B of scratch and {max(free, 0):,} B are free at this layer "
               "(--extra-scratch allows more)")
        packed = -(-trits.size // TRITS_PER_BYTE)
        if packed < ROWS_TABLE_BYTES:
            raise Unsupported(f"{why}; the {packed:,} B of weights are smaller than the {ROWS_TABLE_BYTES:,}-byte "
                              "trit table of dense_rows")
        return KernelChoice("dense_rows", PORTABLE, f"{why}: one table lookup per packed byte, no scratch", 0, False,
                            {"bias": fold_lut_bias(node, trits, 0)})
    layout, groups = lut_layout(trits)
    offset = 0 if variant == DSP else LUT_TABLE_BIAS
    bias = fold_lut_bias(node, trits, offset)
    bits = 8.0 * groups / depth
    reason = (f"{out_features} outputs share a table of 243 partial sums per 5 inputs "
              f"({'lane pairs with SADD16' if variant == DSP else 'portable C'}); rows padded to "
              f"{groups * TRITS_PER_BYTE} trits, {bits:.3f} bits/weight")
    return KernelChoice("dense_lut", variant, reason, scratch, False,
                        {"weights": layout, "groups": groups, "bias": bias})


def choose_conv(node: Node, graph: Graph, variants: list[str], free: int) -> KernelChoice:
    a = node.attrs
    trits = ternary_weights(node)
    variant = DSP if DSP in variants else PORTABLE
    if a["group"] == a["in_channels"] and a["group"] == a["out_channels"] and a["group"] > 1:
        return choose_depthwise(node, trits, variant, free + shared_bytes(graph, node))
    if a["group"] != 1:
        raise Unsupported(f"grouped convolution with {a['group']} groups")
    depth = trits.shape[1]
    patch = sad_patch_bytes(depth)
    in_place = (tuple(a["kernel"]) == (1, 1) and tuple(a["strides"]) == (1, 1) and not any(a["pads"])
                and a["out_channels"] <= a["in_channels"])
    budget = SAD_BLOCK_BYTES if in_place else SAD_BLOCK_BYTES // 2
    if in_place:
        free += shared_bytes(graph, node)
    pixels = a["out_h"] * a["out_w"]
    # A block of at most half the pixels keeps the scratch below the tensor it replaces.
    budget = min(budget, free - 2 * (patch + SAD_MASK_SLACK))
    block = min(pixels // 2, budget // patch) // SAD_LANES * SAD_LANES
    if block < SAD_LANES and budget >= SAD_LANES * patch:
        block = SAD_LANES
    if block < SAD_LANES:
        raise Unsupported(f"a block of {SAD_LANES} patches needs {sad_scratch(depth, SAD_LANES):,} B of scratch and "
                          f"{max(free, 0):,} B are free at this layer (--extra-scratch allows more)")
    requant = fold_sad_requant(node, trits, patch - depth, 510 * patch)
    what = "1x1, in place" if in_place else f"{a['kernel'][0]}x{a['kernel'][1]}"
    how = f"USADA8 over 4 weights x {SAD_LANES} pixels" if variant == DSP else "byte masks summed in portable C"
    reason = f"{what}: {how}, blocks of {block} pixels ({block * patch:,} B of patches)"
    return KernelChoice("conv2d_sad", variant, reason, sad_scratch(depth, block), in_place,
                        {"block": block, "patch": patch, **requant})


def choose_depthwise(node: Node, trits: np.ndarray, variant: str, free: int) -> KernelChoice:
    a = node.attrs
    kernel_h, kernel_w = a["kernel"]
    if kernel_w > 4 or kernel_h > 3:
        raise Unsupported(f"depthwise kernel {kernel_h}x{kernel_w}: depthwise_sad takes up to 3 rows of 4")
    if tuple(a["dilations"]) != (1, 1):
        raise Unsupported(f"dilation {a['dilations']}")
    if a["in_channels"] % DEPTHWISE_CHANNELS:
        raise Unsupported(f"{a['in_channels']} channels: depthwise_sad takes a multiple of {DEPTHWISE_CHANNELS}")
    if a["out_h"] * a["out_w"] > a["in_h"] * a["in_w"]:
        raise Unsupported("output larger than input")
    rows, stride = depthwise_plane(a)
    junk = kernel_h * (4 - kernel_w)
    requant = fold_sad_requant(node, trits, junk, 510 * 4 * kernel_h)
    scratch = depthwise_scratch(a, kernel_h)
    if scratch > free:
        raise Unsupported(f"its planes need {scratch:,} B of scratch and {max(free, 0):,} B are free at this layer "
                          "(--extra-scratch allows more)")
    how = "one word load and two USADA8 per kernel row" if variant == DSP else "byte masks summed in portable C"
    reason = (f"{kernel_h}x{kernel_w} depthwise, in place: {DEPTHWISE_CHANNELS} channels at a time in padded "
              f"planes, {how}")
    return KernelChoice("depthwise_sad", variant, reason, scratch, True,
                        {"plane_rows": rows, "plane_stride": stride, **requant})


def choose_pool(node: Node, graph: Graph) -> KernelChoice:
    a = node.attrs
    if node.op != "AveragePool" or tuple(a["kernel"]) != (a["in_h"], a["in_w"]) or any(a["pads"]):
        raise Unsupported("not a global average")
    if (a["out_h"], a["out_w"]) != (1, 1):
        raise Unsupported("more than one window")
    return KernelChoice("pool_global", PORTABLE, "global average: one pass over the input, 4 channels per load "
                        "with the DSP extension")


def shared_bytes(graph: Graph, node: Node) -> int:
    """Return the output bytes a node saves by running in place (0 when its input is read later)."""
    from .plan import _grouped_buffers

    index = graph.nodes.index(node)
    shared = _grouped_buffers(graph, [index])[1]
    return graph.tensors[node.outputs[0]].size if shared else 0


def free_bytes(graph: Graph, extra_scratch: int) -> list[int]:
    """Return, for every node, the bytes its scratch may take without making the arena larger
    than the plain tensor-by-tensor lower bound plus extra_scratch."""
    from .plan import graph_buffers, lower_bound

    buffers = graph_buffers(graph)
    bound = lower_bound(buffers)
    return [bound + extra_scratch - sum(b.size for b in buffers if b.first <= step <= b.last)
            for step in range(len(graph.nodes))]


def choose_kernels(graph: Graph, target: Target, extra_scratch: int = 0) -> list[KernelChoice]:
    """Choose the kernel of every node, in graph order.

    extra_scratch: bytes by which kernel scratch may make the arena larger than the plain
    tensor-by-tensor plan (dense_lut's tables, larger patch blocks).
    """
    variants = list(target.kernel_variants)
    free = free_bytes(graph, extra_scratch)
    choices = []
    for index, node in enumerate(graph.nodes):
        if node.op == "AveragePool" and node.quant:
            try:
                choices.append(choose_pool(node, graph))
            except Unsupported:
                choices.append(KernelChoice("", PORTABLE, ""))
            continue
        if node.op not in ("Conv", "Dense") or not node.quant or "multiplier_matrix" not in node.quant:
            choices.append(KernelChoice("", PORTABLE, ""))
            continue
        reference = "conv2d" if node.op == "Conv" else "dense"
        try:
            choose = choose_dense if node.op == "Dense" else choose_conv
            choices.append(choose(node, graph, variants, free[index]))
        except Unsupported as reason:
            choices.append(KernelChoice(reference, PORTABLE, f"reference kernel: {reason}"))
    return choices
