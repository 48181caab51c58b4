"""The pipeline in one call: import, quantize, plan, render; and safe writing of the output."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from . import BonsaiError
from .codegen import render
from .data import load_samples
from .importer import import_onnx
from .kernels import choose_kernels
from .ir import WEIGHTED_OPS, Graph, node_macs
from .pack import packed_trit_bytes
from .plan import ArenaPlan, plan_graph
from .quantize import QuantOptions, is_float_graph, quantize
from .targets import Target

log = logging.getLogger(__name__)

# Written into every output folder bonsai-mcu creates; lists the files it wrote.
MARKER = ".bonsai-mcu"


@dataclass
class Compiled:
    graph: Graph
    plan: ArenaPlan
    files: dict[str, str]
    target: Target
    name: str
    # Kernel of each node, in graph order (bonsai_mcu.kernels.KernelChoice); empty for float32.
    kernels: list = field(default_factory=list)


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise BonsaiError(f"--name '{name}' is not a valid C identifier prefix (letters, digits, underscores)")
    return name


class Progress:
    """Samples that draw a progress bar on stderr while they are iterated.

    The bar shows only when stderr is a terminal and warnings of the bonsai_mcu logger are
    enabled, so the command-line option --quiet (errors only) hides it.
    """

    def __init__(self, items, label: str):
        self.items = list(items)
        self.label = label

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self):
        if not (sys.stderr.isatty() and log.getEffectiveLevel() <= logging.WARNING):
            yield from self.items
            return
        with click.progressbar(self.items, label=self.label, file=sys.stderr) as bar:
            yield from bar


def compile_model(model: str | Path, target: Target, name: str | None = None,
                  options: QuantOptions | None = None, calibration: str | Path | None = None,
                  extra_scratch: int = 0) -> Compiled:
    """Import, quantize, choose kernels, plan and render one model.

    extra_scratch: bytes by which kernel scratch may make the arena larger than a plain
    tensor-by-tensor plan (bonsai_mcu.kernels.choose_kernels).
    """
    graph = import_onnx(model, check_name(name) if name else None)
    samples = load_samples(calibration, graph) if calibration else None
    quantize(graph, options or QuantOptions(), Progress(samples, "calibrating") if samples else None)
    kernels = [] if is_float_graph(graph) else choose_kernels(graph, target, extra_scratch)
    plan = plan_graph(graph, max(target.alignment, 4), kernels)
    files = render(graph, plan, target, graph.name, kernels)
    return Compiled(graph, plan, files, target, graph.name, kernels)


def write_output(files: dict[str, str], out_dir: str | Path, force: bool = False,
                 extra: dict[str, str] | None = None) -> list[Path]:
    """Write sources to OUT/src/ and `extra` files to OUT/.

    A non-empty OUT that bonsai-mcu did not create is refused unless
    `force`. Files are rendered into a temporary folder first, so a failure
    leaves OUT as it was; files from an earlier run that this run does not
    produce are removed.
    """
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if out_dir.exists() and not out_dir.is_dir():
        raise BonsaiError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not marker.is_file() and not force:
        raise BonsaiError(f"{out_dir}: folder is not empty and was not created by bonsai-mcu; "
                          "choose another -o folder or pass --force to overwrite")

    relative = {f"src/{name}": text for name, text in files.items()}
    relative.update(extra or {})
    previous = marker.read_text().split() if marker.is_file() else []

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bonsai-", dir=out_dir.parent))
    try:
        for rel, text in relative.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        out_dir.mkdir(exist_ok=True)
        for rel in previous:
            stale = out_dir / rel
            if rel not in relative and stale.is_file() and stale.resolve().is_relative_to(out_dir.resolve()):
                stale.unlink()
        written = []
        for rel in relative:
            destination = out_dir / rel
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, destination)
            written.append(destination)
        marker.write_text("\n".join(sorted(relative)) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


# -- figures for reports ------------------------------------------------------


def layer_rows(graph: Graph, plan: ArenaPlan | None = None) -> list[dict]:
    rows = []
    for index, node in enumerate(graph.nodes):
        row = {
            "index": index, "op": node.op, "name": node.name,
            "input": [graph.tensors[t].shape for t in node.inputs],
            "output": graph.tensors[node.outputs[0]].shape,
            "macs": node_macs(node, graph), "params": 0, "precision": "", "weight_bytes": 0,
        }
        if node.op in WEIGHTED_OPS:
            row["params"] = int(node.weights.size + node.bias.size)
            if node.quant:
                row["precision"] = f"{node.quant['format']} {node.quant['granularity']}".strip()
                row["weight_bytes"] = weight_storage(node)
        rows.append(row)
    return rows


def weight_storage(node) -> int:
    """Bytes of weights plus their scales (32-bit multipliers) for one layer."""
    quant = node.quant
    if quant["format"] == "float32":
        return 4 * int(node.weights.size)
    count = int(quant["values"].size)
    data = packed_trit_bytes(count) if quant["format"] == "ternary" else count
    return data + 4 * int(quant["multipliers"].size)


def weight_summary(graph: Graph, kernels: list | None = None) -> dict:
    """Weight storage figures. With the kernel of each node, ternary bytes are those of the
    layouts the kernels read (dense_lut pads every row to whole bytes)."""
    ternary = [n for n in graph.nodes if n.quant.get("format") == "ternary"]
    int8 = [n for n in graph.nodes if n.quant.get("format") == "int8"]
    ternary_count = sum(int(n.quant["values"].size) for n in ternary)
    layouts = {id(node): choice.data["weights"].size for node, choice in zip(graph.nodes, kernels or [])
               if choice.kernel == "dense_lut"}
    packed = sum(layouts.get(id(n), packed_trit_bytes(int(n.quant["values"].size))) for n in ternary)
    scales = sum(4 * int(n.quant["multipliers"].size) for n in ternary)
    int8_bytes = sum(weight_storage(n) for n in int8)
    bias = sum(8 * int(n.quant["bias_fixed"].size) for n in ternary + int8)
    float32 = [n for n in graph.nodes if n.quant.get("format") == "float32"]
    bias += sum(4 * int(n.bias.size) for n in float32)
    return {
        "float32_layers": len(float32), "float32_bytes": sum(weight_storage(n) for n in float32),
        "ternary_weights": ternary_count, "ternary_packed": packed, "ternary_scales": scales,
        "bits_per_weight": (8.0 * (packed + scales) / ternary_count) if ternary_count else 0.0,
        "int8_layers": len(int8), "int8_bytes": int8_bytes, "bias_bytes": bias,
        "all_weights": sum(int(n.weights.size) for n in graph.nodes if n.op in WEIGHTED_OPS),
    }


def summary_lines(compiled: Compiled) -> list[str]:
    graph, plan = compiled.graph, compiled.plan
    weights = weight_summary(graph, compiled.kernels)
    macs = sum(node_macs(n, graph) for n in graph.nodes)
    weighted = [n for n in graph.nodes if n.op in WEIGHTED_OPS]
    lines = [
        f"model: {graph.source} -> {compiled.name} (target {compiled.target.name})",
        f"layers: {len(graph.nodes)} ops, {len(weighted)} with weights, {macs:,} MACs per inference",
    ]
    if weights["ternary_weights"]:
        lines.append(
            f"ternary weights: {weights['ternary_weights']:,} in {weights['ternary_packed']:,} B packed "
            f"+ {weights['ternary_scales']:,} B scales = {weights['bits_per_weight']:.2f} bits/weight "
            f"(int8: {weights['ternary_weights']:,} B)")
    if weights["int8_layers"]:
        lines.append(f"int8 weights: {weights['int8_layers']} layers, {weights['int8_bytes']:,} B")
    if weights["float32_layers"]:
        lines.append(f"float32 weights: {weights['float32_layers']} layers, {weights['float32_bytes']:,} B")
    bias_type = "float32" if weights["float32_layers"] else "int64"
    lines.append(f"bias: {weights['bias_bytes']:,} B ({bias_type}, one per output channel)")
    # The plan counts elements: 4 bytes each in a float32 model.
    element_bytes = 4 if is_float_graph(graph) else 1
    lines.append(f"arena: {plan.arena_size * element_bytes:,} B (lower bound {plan.lower_bound * element_bytes:,} B, "
                 "inputs and outputs included)")
    if plan.in_place or plan.scratch_size:
        lines.append(f"arena without in-place layers and scratch: lower bound {plan.plain_lower_bound:,} B; "
                     f"{len(plan.in_place)} layer(s) write over their input")
    if plan.scratch_offsets:
        largest = max(plan.scratch_offsets, key=lambda index: compiled.kernels[index].scratch)
        lines.append(f"kernel scratch: largest {plan.scratch_size:,} B (layer {largest}); each layer's scratch "
                     "is alive during that layer only")
    else:
        lines.append(f"kernel scratch: {plan.scratch_size:,} B")
    lines += kernel_lines(compiled)
    errors = [(n.name, n.quant["weight_error"]) for n in weighted
              if n.quant.get("format") in ("ternary", "int8") and n.quant.get("method") != "exact"]
    if errors:
        worst = max(errors, key=lambda item: item[1])
        lines.append(f"ternarization error (relative RMS): mean {np.mean([e for _, e in errors]):.3f}, "
                     f"worst {worst[1]:.3f} in '{worst[0]}'")
    return lines


def kernel_lines(compiled: Compiled) -> list[str]:
    """Return one line per weighted layer: its kernel and why, for the summary and report.txt."""
    if not compiled.kernels:
        return []
    lines = ["kernels:"]
    for index, (node, choice) in enumerate(zip(compiled.graph.nodes, compiled.kernels)):
        if not choice.kernel:
            continue
        name = choice.kernel + (f" ({choice.variant})" if choice.is_fast else "")
        scratch = f", scratch {choice.scratch:,} B" if choice.scratch else ""
        lines.append(f"  {index:>3} {node.op:<6} {name}{scratch}: {choice.reason}")
    return lines
