"""Report: one self-contained HTML page and a plain-text summary of a compiled model.

The page contains a per-layer table, the arena plan drawn as an SVG timeline against its lower
bound, and flash and RAM totals against a board's budget. With sample inputs it also compares
the quantized reference with the float model. With --measure it counts the instructions of each
layer on the target's QEMU board (bonsai_mcu.bench.run_layers). Board budgets come from the
[board.NAME] tables of targets/*.toml.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from . import BonsaiError, __version__
from .bench import OPTIMIZATION, run_layers
from .codegen import templates_dir
from .data import load_samples
from .emulate import require_toolchain
from .ir import WEIGHTED_OPS, node_macs
from .onboard import measure_footprint as measure_sections, qemu_targets
from .pipeline import Compiled, Progress, layer_rows, summary_lines, weight_summary, write_file
from .quantize import is_float_graph
from .targets import available_targets, load_target, targets_dir
from .verify import Agreement, agreement, float_outputs, quantize_inputs, reference_outputs

# SVG timeline geometry, in CSS pixels.
SVG_WIDTH = 960
SVG_HEIGHT = 380
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 84, 16, 16, 96
# Past this many steps only every k-th step gets an axis label.
MAX_STEP_LABELS = 40
# Runs of the hooked firmware per --measure; the layer counts are their means.
LAYER_REPEATS = 3
# Seed of the synthetic standard-normal sample that --measure runs when no --inputs are given.
SYNTHETIC_SEED = 0


# -- boards -------------------------------------------------------------------


@dataclass
class Board:
    name: str
    target: str
    description: str
    flash_bytes: int
    ram_bytes: int


def available_boards() -> dict[str, Board]:
    """Collect the [board.NAME] tables of every target file, keyed by board name."""
    boards: dict[str, Board] = {}
    for target_name in available_targets():
        target = load_target(target_name)
        for board_name, table in target.board.items():
            where = f"{targets_dir() / (target_name + '.toml')}: [board.{board_name}]"
            if not isinstance(table, dict):
                raise BonsaiError(f"{where}: expected a table with flash_bytes and ram_bytes")
            try:
                boards[board_name] = Board(board_name, target.name, str(table.get("description", "")),
                                           int(table["flash_bytes"]), int(table["ram_bytes"]))
            except KeyError as error:
                raise BonsaiError(f"{where}: missing key {error}") from error
    return boards


def find_board(name: str) -> Board:
    boards = available_boards()
    if name not in boards:
        listed = ", ".join(f"{b.name} ({b.target})" for b in sorted(boards.values(), key=lambda b: b.name))
        raise BonsaiError(f"--board {name}: unknown board; boards in targets/*.toml: {listed or 'none'}")
    return boards[name]


# -- layers -------------------------------------------------------------------


def kernel_calls(compiled: Compiled) -> dict[int, str]:
    """Map layer index to the C function that model.c calls for it.

    model.c puts a comment "/* INDEX: OP ..." above each layer's call; layers without a call
    (Reshape views) are absent from the result.
    """
    source = compiled.files.get(f"{compiled.name}.c", "")
    calls = re.finditer(r"/\* (\d+): [^\n]*\*/\s*\n\s*([A-Za-z_]\w*)\(", source)
    return {int(match.group(1)): match.group(2) for match in calls}


def shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def layer_table(compiled: Compiled) -> list[dict]:
    calls = kernel_calls(compiled)
    rows = layer_rows(compiled.graph)
    for row in rows:
        row["input_text"] = ", ".join(shape_text(shape) for shape in row["input"])
        row["output_text"] = shape_text(row["output"])
        view = "none (a view of its input)" if row["op"] == "Reshape" else ""
        row["kernel"] = calls.get(row["index"], view)
    return rows


# -- arena timeline -----------------------------------------------------------


@dataclass
class Timeline:
    """Arena plan over the execution order, with SVG coordinates.

    Step s < len(nodes) is the call of layer s; the last step is after the last layer, while
    the outputs are copied out. live[s] is the total size of the buffers alive at step s.
    """

    steps: int
    arena_size: int
    lower_bound: int
    live: list[int]
    rects: list[dict] = field(default_factory=list)
    live_points: str = ""
    lower_bound_y: float = 0.0
    arena_y: float = 0.0
    x_labels: list[dict] = field(default_factory=list)
    y_ticks: list[dict] = field(default_factory=list)
    width: int = SVG_WIDTH
    height: int = SVG_HEIGHT
    plot: dict = field(default_factory=dict)


def element_bytes(compiled: Compiled) -> int:
    """Return the bytes per arena element: the plan counts elements, 4 bytes each in a float32 model."""
    return 4 if is_float_graph(compiled.graph) else 1


def format_bytes(count: float) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MiB"
    if count >= 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count:.0f} B"


def arena_timeline(compiled: Compiled) -> Timeline:
    graph, plan = compiled.graph, compiled.plan
    scale = element_bytes(compiled)
    steps = len(graph.nodes) + 1
    live = [scale * sum(b.size for b in plan.buffers if b.first <= step <= b.last) for step in range(steps)]
    arena_size, lower_bound = scale * plan.arena_size, scale * plan.lower_bound
    timeline = Timeline(steps, arena_size, lower_bound, live)

    plot_width = SVG_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = SVG_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top_bytes = max(arena_size, lower_bound, max(live, default=0), 1)
    column = plot_width / steps

    def x(step: float) -> float:
        return round(MARGIN_LEFT + step * column, 2)

    def y(count: float) -> float:
        return round(MARGIN_TOP + plot_height * (1.0 - count / top_bytes), 2)

    timeline.plot = {"left": MARGIN_LEFT, "top": MARGIN_TOP, "width": plot_width, "height": plot_height,
                     "bottom": MARGIN_TOP + plot_height, "right": MARGIN_LEFT + plot_width}

    for index, buffer in enumerate(sorted(plan.buffers, key=lambda b: (b.first, b.name))):
        offset, size = scale * plan.buffer_offsets[buffer.name], scale * buffer.size
        height = max(plot_height * size / top_bytes, 1.0)
        timeline.rects.append({
            "x": x(buffer.first), "width": round((buffer.last - buffer.first + 1) * column, 2),
            "y": round(y(offset + size), 2), "height": round(height, 2),
            # Golden-angle hue steps keep neighbouring buffers apart in colour.
            "fill": f"hsl({(index * 137.5) % 360:.0f}, 55%, 68%)",
            "title": (f"{', '.join(buffer.tensors)}: {size:,} B at offset {offset:,}, "
                      f"alive in steps {buffer.first} to {buffer.last}"),
        })

    points = []
    for step, count in enumerate(live):
        points += [f"{x(step)},{y(count)}", f"{x(step + 1)},{y(count)}"]
    timeline.live_points = " ".join(points)
    timeline.lower_bound_y = y(lower_bound)
    timeline.arena_y = y(arena_size)

    every = max(1, -(-steps // MAX_STEP_LABELS))
    for step in range(0, steps, every):
        text = f"{step} {graph.nodes[step].op}" if step < len(graph.nodes) else "outputs"
        timeline.x_labels.append({"x": round(x(step + 0.5), 2), "y": timeline.plot["bottom"] + 12, "text": text})
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        count = top_bytes * fraction
        timeline.y_ticks.append({"y": y(count), "text": format_bytes(count)})
    return timeline


# -- flash and RAM ------------------------------------------------------------


@dataclass
class Footprint:
    """Flash and RAM of the model code in bytes, measured from compiled objects or estimated.

    flash: weights, code, rodata, data, total. ram: data, arena, bss, total.
    """

    flash: dict[str, int]
    ram: dict[str, int]
    measured: bool
    note: str


def estimate_footprint(compiled: Compiled, reason: str) -> Footprint:
    """Estimate flash from the weight, scale and bias bytes and RAM from the arena; no code."""
    weights = weight_summary(compiled.graph)
    weight_bytes = (weights["ternary_packed"] + weights["ternary_scales"] + weights["int8_bytes"]
                    + weights.get("float32_bytes", 0) + weights["bias_bytes"])
    arena_bytes = compiled.plan.arena_size * element_bytes(compiled)
    flash = {"weights": weight_bytes, "code": 0, "rodata": 0, "data": 0, "total": weight_bytes}
    ram = {"data": 0, "arena": arena_bytes, "bss": 0, "total": arena_bytes}
    return Footprint(flash, ram, False, f"estimate: weights, scales and bias in flash, the arena in RAM; "
                                        f"code not included ({reason})")


def measure_footprint(compiled: Compiled) -> Footprint:
    """Compile the sources with the target's compiler and sum their sections.

    Falls back to estimate_footprint for the host target and when the target's compiler is
    not installed.
    """
    target = compiled.target
    if target.is_host or not target.weights_section:
        return estimate_footprint(compiled, f"target {target.name} names no weights section to measure")
    if shutil.which(target.cc) is None:
        packages = " ".join(target.apt_packages) or target.cc
        return estimate_footprint(compiled, f"{target.cc} not found; install it with: apt-get install {packages}")

    sizes = measure_sections(compiled)
    flags = " ".join(target.cflags)
    return Footprint(sizes["flash"], sizes["ram"], True,
                     f"measured: sections of the objects compiled with {target.cc} {flags}, before linking "
                     "(C library functions, stack and linker padding not included)")


def budget_rows(footprint: Footprint, board: Board | None) -> list[dict]:
    if board is None:
        return []
    rows = []
    for memory, used, available in (("flash", footprint.flash["total"], board.flash_bytes),
                                    ("RAM", footprint.ram["total"], board.ram_bytes)):
        share = used / available if available else 0.0
        rows.append({"memory": memory, "used": used, "available": available, "percent": 100.0 * share,
                     "bar": min(100.0, 100.0 * share), "over": used > available})
    return rows


# -- instructions per layer ----------------------------------------------------


def check_measurable(compiled: Compiled) -> None:
    """Raise BonsaiError unless the target has a QEMU board and its toolchain is installed."""
    target = compiled.target
    if not target.qemu:
        raise BonsaiError(f"--measure: target {target.name} has no QEMU board to count instructions on; "
                          f"pass --target with one of {', '.join(qemu_targets())}")
    require_toolchain(target, emulator=True)


def measurement_sample(compiled: Compiled, inputs: str | Path | None) -> tuple[list[list[np.ndarray]], str]:
    """Return the one physical sample that --measure runs, with a phrase naming its origin for the page."""
    graph = compiled.graph
    if inputs is not None:
        samples = load_samples(inputs, graph)[:1]
        if not samples:
            raise BonsaiError(f"--inputs {inputs}: contains no samples for --measure to run")
        return quantize_inputs(graph, samples), f"the first sample of {inputs}"

    rng = np.random.default_rng(SYNTHETIC_SEED)
    sample = [rng.standard_normal(graph.tensors[name].logical_shape) for name in graph.inputs]
    return quantize_inputs(graph, [sample]), f"a standard-normal sample (seed {SYNTHETIC_SEED})"


def measure_layers(compiled: Compiled, inputs: str | Path | None) -> tuple[list[float], str]:
    """Count the instructions of every layer on the target's QEMU board and return them with a note for the page."""
    check_measurable(compiled)
    sample, origin = measurement_sample(compiled, inputs)
    with tempfile.TemporaryDirectory(prefix="bonsai-report-") as folder:
        counts = run_layers(compiled, sample, LAYER_REPEATS, Path(folder))
    target = compiled.target
    # NOTE: run_layers appends OPTIMIZATION (-O3) to the target's flags, so the counts describe an -O3
    # build. For digits on cortex-m4, run_on_qemu counted 234,760 instructions at -Os and 204,680 at -O3.
    note = (f"Instructions: mean of {LAYER_REPEATS} runs of {origin} on QEMU machine {target.qemu['machine']} "
            f"(-icount shift=0), code built with {target.cc} {' '.join(target.cflags)} {OPTIMIZATION}; the "
            f"last -O flag applies, so a build with the target's flags alone can differ. Each count is the "
            "difference of two counter readings around the layer's call, less the measured cost of one reading.")
    return counts, note


def add_instructions(layers: list[dict], counts: list[float] | None) -> None:
    """Set "instructions" and "instructions_per_mac" in each row, None where not measured or the layer has no MACs."""
    for index, row in enumerate(layers):
        row["instructions"] = None if counts is None else int(round(counts[index]))
        measured = row["instructions"] is not None and row["macs"] > 0
        row["instructions_per_mac"] = row["instructions"] / row["macs"] if measured else None


# -- the report ---------------------------------------------------------------


@dataclass
class Report:
    compiled: Compiled
    model: str
    layers: list[dict]
    timeline: Timeline
    footprint: Footprint
    board: Board | None
    budget: list[dict]
    summary: list[str]
    agreement: list[Agreement] = field(default_factory=list)
    runtime: str = ""
    sample_count: int = 0
    inputs: str = ""
    instructions_measured: bool = False
    instructions_note: str = ("Instructions: not measured; pass --measure on a target with a QEMU board "
                              "to count them per layer.")


def float_agreement(compiled: Compiled, model: str | Path, inputs: str | Path) -> tuple[list[Agreement], str, int]:
    """Run the quantized reference and the float model on the samples in `inputs`."""
    graph = compiled.graph
    samples = load_samples(inputs, graph)
    quantized = reference_outputs(graph, Progress(quantize_inputs(graph, samples), "reference"))
    float_results, runtime = float_outputs(Path(model), graph, Progress(samples, "float model"))
    return agreement(graph, float_results, quantized), runtime, len(samples)


def build_report(compiled: Compiled, model: str | Path, board: Board | None = None,
                 inputs: str | Path | None = None, measure: bool = False) -> Report:
    """Collect the report; with `measure`, count each layer's instructions under QEMU on one sample."""
    if measure:
        check_measurable(compiled)
    footprint = measure_footprint(compiled)
    report = Report(compiled, str(model), layer_table(compiled), arena_timeline(compiled), footprint, board,
                    budget_rows(footprint, board), summary_lines(compiled))
    if inputs is not None:
        report.agreement, report.runtime, report.sample_count = float_agreement(compiled, model, inputs)
        report.inputs = str(inputs)

    counts = None
    if measure:
        counts, report.instructions_note = measure_layers(compiled, inputs)
        report.instructions_measured = True
    add_instructions(report.layers, counts)
    return report


def text_summary(report: Report) -> list[str]:
    """Return the plain-text lines printed to the terminal."""
    lines = list(report.summary)
    footprint = report.footprint
    kind = "measured" if footprint.measured else "estimated"
    lines.append(f"flash: {footprint.flash['total']:,} B {kind} (weights {footprint.flash['weights']:,} B, "
                 f"code {footprint.flash['code']:,} B, other read-only {footprint.flash['rodata']:,} B, "
                 f"initialized data {footprint.flash['data']:,} B)")
    lines.append(f"RAM: {footprint.ram['total']:,} B {kind} (arena {footprint.ram['arena']:,} B, "
                 f"other {footprint.ram['data'] + footprint.ram['bss']:,} B)")
    if not footprint.measured:
        lines.append(f"  {footprint.note}")
    for row in report.budget:
        verdict = "OVER BUDGET" if row["over"] else "fits"
        lines.append(f"{row['memory']} budget of {report.board.name}: {row['used']:,} of {row['available']:,} B "
                     f"({row['percent']:.1f}%), {verdict}")
    for entry in report.agreement:
        text = (f"reference vs float ({report.runtime}), output '{entry.output}', {report.sample_count} "
                f"sample{'' if report.sample_count == 1 else 's'}: "
                f"cosine {entry.cosine:.4f}, RMSE {entry.rmse:.4g}, max abs error {entry.max_abs_error:.4g}")
        if entry.top1 is not None:
            text += f", top-1 agreement {entry.top1 * 100:.1f}%"
        lines.append(text)
    if report.instructions_measured:
        total = sum(row["instructions"] for row in report.layers)
        macs = sum(row["macs"] for row in report.layers)
        per_mac = f", {total / macs:.2f} per MAC" if macs else ""
        lines.append(f"instructions per inference: {total:,} measured on QEMU machine "
                     f"{report.compiled.target.qemu['machine']}, sum over {len(report.layers)} layers{per_mac}")
    return lines


def html_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )


def render_html(report: Report) -> str:
    compiled = report.compiled
    graph = compiled.graph
    totals = {
        "params": sum(row["params"] for row in report.layers),
        "macs": sum(node_macs(node, graph) for node in graph.nodes),
        "weight_bytes": sum(row["weight_bytes"] for row in report.layers),
        "weighted_layers": sum(1 for node in graph.nodes if node.op in WEIGHTED_OPS),
    }
    if report.instructions_measured:
        totals["instructions"] = sum(row["instructions"] for row in report.layers)
    context = {
        "report": report, "compiled": compiled, "graph": graph, "plan": compiled.plan, "totals": totals,
        "model_name": Path(report.model).name, "version": __version__, "format_bytes": format_bytes,
        "plain_lower_bound": compiled.plan.plain_lower_bound if compiled.plan.plain_lower_bound != compiled.plan.lower_bound else 0,
    }
    return html_environment().get_template("report.html.j2").render(context)


def write_report(report: Report, path: str | Path) -> Path:
    """Write the HTML page to `path` through a temporary file; check `path` first with pipeline.check_output_file."""
    path = Path(path)
    if path.is_dir():
        raise BonsaiError(f"-o {path}: is a folder; name the HTML file to write, for example {path / 'report.html'}")
    return write_file(path, render_html(report), "-o")
