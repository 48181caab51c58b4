"""Codegen stage: render templates/ into C sources for one quantized, planned graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from . import __version__
from .ir import Graph, Node
from .pack import pack_weights
from .plan import ArenaPlan
from .targets import Target

KERNEL_OF_OP = {
    "Conv": "conv2d", "Dense": "dense", "Add": "add", "AveragePool": "pool", "MaxPool": "pool",
    "Softmax": "softmax", "Clamp": "elementwise", "Lut": "elementwise", "Transpose": "transpose",
}


def templates_dir() -> Path:
    """Return the templates folder: bonsai_mcu/templates when installed, templates/ in a source tree."""
    # bonsai_mcu.templates has no __init__.py, so importlib.resources returns a
    # MultiplexedPath whose str() is not a folder: look beside this file instead.
    installed = Path(__file__).resolve().parent / "templates"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "templates"


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


# -- C literals ---------------------------------------------------------------


def c_array_body(values, per_line: int = 16, literal=str) -> str:
    items = [literal(int(v)) for v in np.asarray(values).reshape(-1)]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return ",\n".join("    " + line for line in lines)


def int64_literal(value: int) -> str:
    return f"INT64_C({value})"


def shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def layout_name(tensor) -> str:
    rank = len(tensor.shape)
    if rank == 4 and tuple(tensor.perm) == (0, 2, 3, 1):
        return "NHWC"
    if rank == 3 and tuple(tensor.perm) == (0, 2, 1):
        return "NLC"
    if tuple(tensor.perm) == tuple(range(rank)):
        return "row-major"
    return "axes " + shape_text(tensor.perm) + " of the ONNX shape"


def padded6(values, fill) -> list[int]:
    values = [int(v) for v in values]
    return [fill] * (6 - len(values)) + values


def element_strides(shape) -> list[int]:
    strides, running = [], 1
    for dim in reversed(shape):
        strides.insert(0, running)
        running *= int(dim)
    return strides


def comment_text(text: str) -> str:
    """Make a model-supplied name safe inside a C block comment on one line.

    Node and tensor names come from the ONNX file: comment delimiters,
    trigraph starts, line breaks and other control characters are spaced
    out or replaced so the comment still compiles warning-free.
    """
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?")


def broadcast_fields(out_shape, a_shape, b_shape) -> str:
    """Return the C initializers of an Add's output shape and its two inputs' broadcast strides (6 axes)."""
    rank = len(out_shape)

    def broadcast_strides(shape):
        shape = (1,) * (rank - len(shape)) + tuple(shape)
        strides = element_strides(shape)
        return padded6([0 if d == 1 and o != 1 else s for d, o, s in zip(shape, out_shape, strides)], 0)

    fields = [padded6(out_shape, 1), broadcast_strides(a_shape), broadcast_strides(b_shape)]
    return ", ".join("{ " + ", ".join(map(str, f)) + " }" for f in fields)


@dataclass
class _Array:
    ctype: str
    name: str
    length: int
    body: str
    static: bool = True


class _Emitter:
    """Collects per-layer C data blocks and calls for one graph."""

    def __init__(self, graph: Graph, plan: ArenaPlan, prefix: str):
        self.graph = graph
        self.plan = plan
        self.prefix = prefix
        self.guard = prefix.upper()
        self.blocks: list[dict] = []
        self.layers: list[dict] = []
        self.tables: list[str] = []
        self.kernels: set[str] = set()
        # Kernel of each node (bonsai_mcu.kernels.KernelChoice); empty: the reference kernels.
        self.choices: list = []
        self.fast_layers: list = []
        self.depthwise_loops: list[dict] = []
        self.sad_rows: list[dict] = []

    def pointer(self, tensor: str, const: bool) -> str:
        qualifier = "const int8_t *" if const else "int8_t *"
        return f"({qualifier})(arena + {self.plan.offsets[tensor]})"

    def describe(self, index: int, node: Node) -> str:
        ins = ", ".join(shape_text(self.graph.tensors[t].shape) for t in node.inputs)
        out = shape_text(self.graph.tensors[node.outputs[0]].shape)
        text = f"{index}: {node.op} \"{node.name}\", {ins} -> {out}"
        if node.quant.get("format"):
            text += f", {node.quant['format']} weights {node.quant['granularity']}"
        activation = node.attrs.get("activation")
        if activation is not None:
            text += f", clamp [{activation[1]:g}, {activation[2]:g}]"
        return comment_text(text)

    def requant_init(self, node: Node, symbol: str) -> tuple[list[_Array], str]:
        quant = node.quant
        stored = pack_weights(quant["values"], quant["format"])
        weight_ctype = "uint8_t" if quant["format"] == "ternary" else "int8_t"
        weight_values = stored if quant["format"] == "ternary" else stored.view(np.int8)
        arrays = [
            _Array(weight_ctype, f"{symbol}_weights", stored.size, c_array_body(weight_values)),
            _Array("int32_t", f"{symbol}_multipliers", quant["multipliers"].size,
                   c_array_body(quant["multipliers"], 8)),
            _Array("int64_t", f"{symbol}_bias", quant["bias_fixed"].size,
                   c_array_body(quant["bias_fixed"], 4, int64_literal)),
        ]
        fmt = f"{self.guard}_WEIGHTS_TERNARY" if quant["format"] == "ternary" else f"{self.guard}_WEIGHTS_INT8"
        init = (f"{{ {symbol}_weights, {symbol}_multipliers, {symbol}_bias, {quant['shift']}, "
                f"{quant['group_size']}, {quant['input_zero_point']}, {quant['output_zero_point']}, "
                f"{quant['act_min']}, {quant['act_max']}, {fmt}, {1 if quant['multipliers'].size == 1 else 0} }}")
        return arrays, init

    def emit(self, index: int, node: Node) -> None:
        if self.choices and self.choices[index].is_fast:
            from .codegen_fast import emit_fast

            emit_fast(self, index, node, self.choices[index])
            return
        symbol = f"{self.prefix}_layer{index}"
        comment = self.describe(index, node)
        out = node.outputs[0]
        kernel = KERNEL_OF_OP.get(node.op)
        if kernel:
            self.kernels.add(kernel)
        block = {"comment": comment, "arrays": [], "params_type": "", "symbol": symbol, "init": ""}
        call = ""
        params_type = ""
        a = node.attrs

        if node.op == "Conv":
            arrays, requant = self.requant_init(node, symbol)
            kernel_h, kernel_w = a["kernel"]
            stride_h, stride_w = a["strides"]
            dilation_h, dilation_w = a["dilations"]
            pad_top, pad_left, _, _ = a["pads"]
            geometry = [a["in_h"], a["in_w"], a["in_channels"], a["out_h"], a["out_w"], a["out_channels"],
                        kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, a["group"]]
            params_type = f"{self.prefix}_conv2d_params"
            block.update(arrays=arrays, init="{ " + requant + ", " + ", ".join(map(str, geometry)) + " }")
            call = f"{self.prefix}_conv2d(&{symbol}, {self.pointer(node.inputs[0], True)}, {self.pointer(out, False)});"
        elif node.op == "Dense":
            arrays, requant = self.requant_init(node, symbol)
            params_type = f"{self.prefix}_dense_params"
            rows, depth = a["rows"], node.quant["values"].shape[1]
            block.update(arrays=arrays, init=f"{{ {requant}, {rows}, {depth}, {node.quant['values'].shape[0]} }}")
            call = f"{self.prefix}_dense(&{symbol}, {self.pointer(node.inputs[0], True)}, {self.pointer(out, False)});"
        elif node.op == "Add":
            q = node.quant
            arrays_text = broadcast_fields(self.graph.tensors[out].shape, a["a_shape"], a["b_shape"])
            scalars = [q["a_zero_point"], q["b_zero_point"], q["a_multiplier"], q["b_multiplier"], q["shift"],
                       q["output_zero_point"], q["act_min"], q["act_max"]]
            params_type = f"{self.prefix}_add_params"
            block.update(init="{ " + arrays_text + ", " + ", ".join(map(str, scalars)) + " }")
            call = (f"{self.prefix}_add(&{symbol}, {self.pointer(node.inputs[0], True)}, "
                    f"{self.pointer(node.inputs[1], True)}, {self.pointer(out, False)});")
        elif node.op in ("AveragePool", "MaxPool"):
            kernel_h, kernel_w = a["kernel"]
            stride_h, stride_w = a["strides"]
            fields = [a["in_h"], a["in_w"], a["in_channels"], a["out_h"], a["out_w"], kernel_h, kernel_w,
                      stride_h, stride_w, *a["pads"], a.get("count_include_pad", 0),
                      node.quant.get("input_zero_point", 0)]
            params_type = f"{self.prefix}_pool_params"
            block.update(init="{ " + ", ".join(map(str, fields)) + " }")
            function = "average_pool" if node.op == "AveragePool" else "max_pool"
            call = f"{self.prefix}_{function}(&{symbol}, {self.pointer(node.inputs[0], True)}, {self.pointer(out, False)});"
        elif node.op == "Softmax":
            table = _Array("uint32_t", f"{symbol}_exp", 256, c_array_body(node.quant["exp_table"], 8, lambda v: f"{v}u"))
            size = self.graph.tensors[out].size
            params_type = f"{self.prefix}_softmax_params"
            block.update(arrays=[table], init=f"{{ {symbol}_exp, {size // a['row']}, {a['row']} }}")
            call = f"{self.prefix}_softmax(&{symbol}, {self.pointer(node.inputs[0], True)}, {self.pointer(out, False)});"
        elif node.op == "Clamp":
            size = self.graph.tensors[out].size
            call = (f"{self.prefix}_clamp_tensor({self.pointer(node.inputs[0], True)}, {self.pointer(out, False)}, "
                    f"{size}, {node.quant['act_min']}, {node.quant['act_max']});")
        elif node.op == "Lut":
            size = self.graph.tensors[out].size
            table = f"{symbol}_table"
            block.update(arrays=[_Array("int8_t", table, 256, c_array_body(node.quant["table"]), static=False)])
            self.tables.append(table)
            call = f"{self.prefix}_lookup({table}, {self.pointer(node.inputs[0], True)}, {self.pointer(out, False)}, {size});"
        elif node.op == "Transpose":
            source = self.graph.tensors[node.inputs[0]]
            strides = element_strides(source.shape)
            out_shape = self.graph.tensors[out].shape
            fields = [padded6(out_shape, 1), padded6([strides[axis] for axis in a["perm"]], 0)]
            params_type = f"{self.prefix}_transpose_params"
            block.update(init="{ " + ", ".join("{ " + ", ".join(map(str, f)) + " }" for f in fields) + " }")
            call = f"{self.prefix}_transpose(&{symbol}, {self.pointer(node.inputs[0], True)}, {self.pointer(out, False)});"
        elif node.op == "Reshape":
            source, target = self.plan.offsets[node.inputs[0]], self.plan.offsets[out]
            if source != target:
                raise AssertionError(f"Reshape '{node.name}' view does not share its input's bytes")
            call = "/* a view of the same bytes: nothing to do */"
        else:
            raise AssertionError(f"codegen: no kernel for IR op {node.op}")

        block["params_type"] = params_type
        if block["arrays"] or params_type:
            self.blocks.append(block)
        self.layers.append({"comment": comment, "call": call, "params_type": params_type, "symbol": symbol})


def tensor_context(graph: Graph, name: str, onnx_name: str) -> dict:
    tensor = graph.tensors[name]
    return {
        "onnx_name": comment_text(onnx_name),
        "logical_shape": shape_text(tensor.logical_shape),
        "physical_shape": shape_text(tensor.shape),
        "layout": layout_name(tensor),
        "size": tensor.size,
        # A float32 tensor (--weights float32) has no int8 parameters.
        # Nine significant digits name one float32 exactly: the C helper divides by the same
        # float32 scale as QParams.quantize_float32.
        "scale": f"{float(np.float32(tensor.qparams.scale)):.9g}" if tensor.qparams else None,
        "zero_point": tensor.qparams.zero_point if tensor.qparams else None,
    }


def render(graph: Graph, plan: ArenaPlan, target: Target, prefix: str, kernels: list | None = None) -> dict[str, str]:
    """Render every generated file; return {file name: text} for the src/ folder.

    kernels: the kernel of each node (bonsai_mcu.kernels.choose_kernels); None runs every
    layer on the reference kernels.
    """
    from .codegen_f32 import FLOAT_BYTES, FloatEmitter
    from .codegen_fast import kernel_files, template_context
    from .quantize import is_float_graph

    env = environment()
    float_mode = is_float_graph(graph)
    # Planned offsets and sizes count elements: 1 byte in int8, FLOAT_BYTES in float32.
    element_type, element_bytes = ("float", FLOAT_BYTES) if float_mode else ("int8_t", 1)
    emitter = (FloatEmitter if float_mode else _Emitter)(graph, plan, prefix)
    if kernels and not float_mode:
        emitter.choices = list(kernels)
    for index, node in enumerate(graph.nodes):
        emitter.emit(index, node)

    source_name = Path(graph.source).name if graph.source else "an in-memory graph"
    banner = f"Generated by bonsai-mcu {__version__} from {source_name} for target {target.name}. Do not edit."
    guard = prefix.upper()
    input_params = [f"const {element_type} *input_{i}" for i in range(len(graph.inputs))]
    output_params = [f"{element_type} *output_{i}" for i in range(len(graph.outputs))]
    signature = ", ".join(input_params + output_params)
    arguments = ", ".join([f"input_{i}" for i in range(len(graph.inputs))] +
                          [f"output_{i}" for i in range(len(graph.outputs))])
    context = {
        "banner": banner, "prefix": prefix, "guard": guard, "signature": signature, "arguments": arguments,
        "arena_size": max(plan.arena_size * element_bytes, 1), "lower_bound": plan.lower_bound * element_bytes,
        "float_mode": float_mode,
        "inputs": [tensor_context(graph, n, o) for n, o in zip(graph.inputs, graph.onnx_inputs)],
        "outputs": [tensor_context(graph, n, o) for n, o in zip(graph.outputs, graph.onnx_outputs)],
        "input_copies": [{"name": f"input_{i}", "offset": plan.offsets[n] * element_bytes,
                          "size": graph.tensors[n].size * element_bytes} for i, n in enumerate(graph.inputs)],
        "output_copies": [{"name": f"output_{i}", "offset": plan.offsets[n] * element_bytes,
                           "size": graph.tensors[n].size * element_bytes} for i, n in enumerate(graph.outputs)],
        "layers": emitter.layers, "blocks": emitter.blocks, "tables": emitter.tables,
        "kernels": sorted(emitter.kernels),
        "weights_section": target.weights_section, "arena_section": target.arena_section,
        "summary": f"{len(graph.nodes)} layers, {len(graph.inputs)} input(s), {len(graph.outputs)} output(s)",
    }
    fast_files = kernel_files(emitter) if not float_mode else {}
    if not float_mode:
        context.update(template_context(emitter))

    files = {
        f"{prefix}.h": env.get_template("model.h.j2").render(context),
        f"{prefix}.c": env.get_template("model.c.j2").render(context),
        f"{prefix}_weights.c": env.get_template("weights.c.j2").render(context),
        f"{prefix}_kernels.h": env.get_template("kernels/kernels.h.j2").render(context),
    }
    for kernel in sorted(emitter.kernels - set(fast_files)):
        files[f"{prefix}_{kernel}.c"] = env.get_template(f"kernels/{kernel}.c.j2").render(context)
    for stem, template in sorted(fast_files.items()):
        files[f"{prefix}_{stem}.c"] = env.get_template(f"kernels/{template}.c.j2").render(context)
    return files
