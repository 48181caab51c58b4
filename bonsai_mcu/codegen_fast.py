"""Codegen of the layers that run a fast kernel (bonsai_mcu.kernels): their constant data,
parameter blocks and calls, and the template context those kernels need.

The templates are templates/kernels/<kernel>.c.j2 (portable) and <kernel>_dsp.c.j2 where a
kernel has a variant for the Armv7E-M DSP extension; their declarations are in
templates/kernels/fast_kernels.h.j2.
"""

from __future__ import annotations

import numpy as np

from .codegen import _Array, c_array_body, int64_literal
from .ir import Node
from .kernels import LUT_PASS_GROUPS, LUT_TABLE_BIAS, SAD_MASK_SLACK, TRITS_PER_BYTE, KernelChoice
from .pack import pack_trits

# Kernels whose DSP variant lives in a template of its own.
DSP_TEMPLATES = {"dense_lut": "dense_lut_dsp"}
# Kernels that decode trits through the shared mask table (templates/kernels/trit_masks.c.j2).
MASK_KERNELS = ("conv2d_sad", "depthwise_sad")


def template_name(kernel: str, variant: str) -> str:
    """Return the template (without .c.j2) of a kernel variant."""
    if variant == "dsp":
        return DSP_TEMPLATES.get(kernel, kernel)
    return kernel


def trit_masks() -> list[list[int]]:
    """Rows of NAME_trit_masks: for each packed byte, A masks in bytes 0..4, B masks in 8..12."""
    rows = []
    for byte in range(243):
        digits = [byte // 3 ** j % 3 for j in range(TRITS_PER_BYTE)]
        a = [255 if d == 0 else 0 for d in digits] + [0, 0, 0]
        b = [255 if d != 2 else 0 for d in digits] + [0, 0, 0]
        rows.append(a + b)
    return rows


def _requant_arrays(symbol: str, data: dict, weights: np.ndarray) -> list[_Array]:
    return [
        _Array("uint8_t", f"{symbol}_weights", weights.size, c_array_body(weights)),
        _Array("int32_t", f"{symbol}_multipliers", len(data["multipliers"]), c_array_body(data["multipliers"], 8)),
        _Array("int64_t", f"{symbol}_bias", len(data["bias"]), c_array_body(data["bias"], 4, int64_literal)),
    ]


def emit_fast(emitter, index: int, node: Node, choice: KernelChoice) -> None:
    """Add the data block, parameter block and call of node `index` to the emitter."""
    prefix, symbol = emitter.prefix, f"{emitter.prefix}_layer{index}"
    comment = emitter.describe(index, node)
    a, quant, data = node.attrs, node.quant, choice.data
    scratch = f"arena + {emitter.plan.scratch_offsets.get(index, 0)}"
    source, target = emitter.pointer(node.inputs[0], True), emitter.pointer(node.outputs[0], False)
    emitter.kernels.add(choice.kernel)
    emitter.fast_layers.append((node, choice))

    if choice.kernel == "dense_lut":
        multipliers = [int(m) for m in quant["multiplier_matrix"][:, 0]]
        if quant["multipliers"].size == 1:
            multipliers = multipliers[:1]
        arrays = _requant_arrays(symbol, {"bias": data["bias"], "multipliers": multipliers}, data["weights"])
        fields = [f"{symbol}_weights", f"{symbol}_bias", f"{symbol}_multipliers", quant["shift"],
                  quant["output_zero_point"], quant["act_min"], quant["act_max"], a["rows"],
                  quant["values"].shape[1], quant["values"].shape[0], int(quant["multipliers"].size == 1)]
    elif choice.kernel == "dense_rows":
        multipliers = [int(m) for m in quant["multiplier_matrix"][:, 0]]
        if quant["multipliers"].size == 1:
            multipliers = multipliers[:1]
        arrays = _requant_arrays(symbol, {"bias": data["bias"], "multipliers": multipliers},
                                 pack_trits(quant["values"]))
        fields = [f"{symbol}_weights", f"{symbol}_bias", f"{symbol}_multipliers", quant["shift"],
                  quant["output_zero_point"], quant["act_min"], quant["act_max"], a["rows"],
                  quant["values"].shape[1], quant["values"].shape[0], int(quant["multipliers"].size == 1)]
        params_type = f"{prefix}_dense_lut_params"
        emitter.blocks.append({"comment": comment, "arrays": arrays, "params_type": params_type, "symbol": symbol,
                               "init": "{ " + ", ".join(str(f) for f in fields) + " }"})
        call = f"{prefix}_dense_rows(&{symbol}, {source}, {target});"
        emitter.layers.append({"comment": comment, "call": call, "params_type": params_type, "symbol": symbol})
        return
    elif choice.kernel == "conv2d_sad":
        weights = pack_trits(quant["values"])
        multipliers = data["multipliers"][:1] if data["per_tensor"] else data["multipliers"]
        arrays = _requant_arrays(symbol, {"bias": data["bias"], "multipliers": multipliers}, weights)
        fields = [f"{symbol}_weights", f"{symbol}_bias", f"{symbol}_multipliers", int64_literal(data["tie_limit"]),
                  data["pre_shift"], data["post_shift"], data["act_min"], data["act_max"],
                  a["in_h"], a["in_w"], a["in_channels"], a["out_h"], a["out_w"], a["out_channels"],
                  *a["kernel"], *a["strides"], *a["dilations"], a["pads"][0], a["pads"][1],
                  quant["input_zero_point"], data["patch"], data["block"], data["per_tensor"], data["check_ties"],
                  sad_row_variant(emitter, node, choice)]
    elif choice.kernel == "depthwise_sad":
        weights = pack_trits(quant["values"])
        multipliers = data["multipliers"][:1] if data["per_tensor"] else data["multipliers"]
        arrays = _requant_arrays(symbol, {"bias": data["bias"], "multipliers": multipliers}, weights)
        loop = depthwise_loop_key(node, choice)
        if loop not in emitter.depthwise_loops:
            emitter.depthwise_loops.append(loop)
        fields = [f"{symbol}_weights", f"{symbol}_bias", f"{symbol}_multipliers", int64_literal(data["tie_limit"]),
                  data["pre_shift"], data["post_shift"], data["act_min"], data["act_max"],
                  a["in_h"], a["in_w"], a["in_channels"], a["out_h"], a["out_w"], *a["kernel"], *a["strides"],
                  a["pads"][0], a["pads"][1], quant["input_zero_point"], data["plane_rows"], data["plane_stride"],
                  data["per_tensor"], data["check_ties"], emitter.depthwise_loops.index(loop)]
    elif choice.kernel == "pool_global":
        arrays = []
        fields = [a["in_h"] * a["in_w"], a["in_channels"]]
        emitter.kernels.add("pool_global")
        params_type = f"{prefix}_global_pool_params"
        emitter.blocks.append({"comment": comment, "arrays": arrays, "params_type": params_type, "symbol": symbol,
                               "init": "{ " + ", ".join(str(f) for f in fields) + " }"})
        call = f"{prefix}_global_average_pool(&{symbol}, {source}, {target});"
        emitter.layers.append({"comment": comment, "call": call, "params_type": params_type, "symbol": symbol})
        return
    else:
        raise AssertionError(f"codegen: no emitter for kernel {choice.kernel}")

    params_type = f"{prefix}_{choice.kernel}_params"
    init = "{ " + ", ".join(str(f) for f in fields) + " }"
    emitter.blocks.append({"comment": comment, "arrays": arrays, "params_type": params_type, "symbol": symbol,
                           "init": init})
    call = f"{prefix}_{choice.kernel}(&{symbol}, {source}, {target}, {scratch});"
    emitter.layers.append({"comment": comment, "call": call, "params_type": params_type, "symbol": symbol})


# conv2d_sad unrolls the patch loop over chunks of at most this many words.
SAD_CHUNK_WORDS = 16
# Marks a layer without an unrolled loop: it runs the C loop.
NO_VARIANT = 255


def sad_row_variant(emitter, node: Node, choice: KernelChoice) -> int:
    """Return the index of the unrolled conv2d_sad loop for this layer, adding it if new."""
    data = choice.data
    words = data["patch"] // 4
    chunk = max(size for size in range(1, min(words, SAD_CHUNK_WORDS) + 1) if words % size == 0)
    b_offset = data["patch"] + SAD_MASK_SLACK
    # LDR reaches 4095 bytes past its base; Thumb-2 MOVS and the immediate CMP take 8 bits.
    if b_offset + 4 * chunk > 4095 or words // chunk > 256:
        return NO_VARIANT
    key = {"words": words, "chunk": chunk, "chunks": words // chunk, "b_offset": b_offset,
           "stride": node.attrs["out_channels"], "post_shift": data["post_shift"], "pre_shift": data["pre_shift"],
           "act_min": data["act_min"], "act_max": data["act_max"], "check_ties": data["check_ties"],
           "low_mask": (1 << data["post_shift"]) - 1}
    if key not in emitter.sad_rows:
        emitter.sad_rows.append(key)
    return emitter.sad_rows.index(key)


def depthwise_loop_key(node: Node, choice: KernelChoice) -> dict:
    """Return the constants that depthwise_sad unrolls into one loop: a layer with the same
    constants shares the loop."""
    a, data = node.attrs, choice.data
    return {"out_w": a["out_w"], "channels": a["in_channels"], "stride_w": a["strides"][1],
            "stride_h": a["strides"][0], "kernel_h": a["kernel"][0], "plane_stride": data["plane_stride"],
            "in_h": a["in_h"], "in_w": a["in_w"], "pad_top": a["pads"][0], "pad_left": a["pads"][1],
            "plane_step": 8 + data["plane_rows"] * data["plane_stride"],
            "pre_shift": data["pre_shift"], "post_shift": data["post_shift"],
            "saturate_only": int(data["act_min"] == -128 and data["act_max"] == 127 and not data["check_ties"]),
            # Unrolled loops for rows of at most 32 outputs whose loads and steps fit the 12-bit
            # immediates of LDR and SUB.
            "unroll": int(a["out_w"] <= 32
                          and (a["kernel"][0] - 1) * data["plane_stride"] + (a["out_w"] - 1) * a["strides"][1] <= 4095
                          and a["strides"][0] * data["plane_stride"] <= 4095 and a["in_w"] <= 32)}


def template_context(emitter) -> dict:
    """Return the context entries the fast kernel templates read."""
    depths = [node.quant["values"].shape[1] for node, choice in emitter.fast_layers if choice.kernel == "dense_lut"]
    tails = {-(-depth // TRITS_PER_BYTE) % LUT_PASS_GROUPS for depth in depths}
    sizes = sorted({min(LUT_PASS_GROUPS, -(-depth // TRITS_PER_BYTE)) for depth in depths} | (tails - {0}))
    variants = {choice.variant for _, choice in emitter.fast_layers if choice.kernel == "dense_lut"}
    return {
        "lut_pass_sizes": sizes, "lut_variant": next(iter(variants), "portable"), "lut_bias": LUT_TABLE_BIAS,
        "depthwise_loops": [dict(key, index=index) for index, key in enumerate(emitter.depthwise_loops)],
        "sad_rows": [dict(key, index=index) for index, key in enumerate(emitter.sad_rows)],
        "trit_masks": trit_masks(),
        "trit_rows": [[byte // 3 ** j % 3 - 1 for j in range(TRITS_PER_BYTE)] for byte in range(243)],
    }


def kernel_files(emitter) -> dict[str, str]:
    """Return {generated file stem: template stem} of the fast kernels the model calls."""
    files = {}
    for _, choice in emitter.fast_layers:
        files[choice.kernel] = template_name(choice.kernel, choice.variant)
    if any(kernel in files for kernel in MASK_KERNELS):
        files["trit_masks"] = "trit_masks"
    return files
