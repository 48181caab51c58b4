"""Command-line interface: click commands over the pipeline stages."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from . import BonsaiError, __version__
from .data import load_samples
from .importer import import_onnx
from .package import ECOSYSTEMS, package_files, parse_ecosystems
from .ir import WEIGHTED_OPS, node_macs
from .pipeline import Progress, compile_model, layer_rows, summary_lines, write_output
from .plan import plan_graph
from .quantize import GRANULARITIES, METHODS, PRECISIONS, QuantOptions, choose_layout, is_float_graph
from .targets import available_targets, load_target
from .verify import (label_accuracy, load_labels, FLOAT_ATOL, FLOAT_RTOL, agreement, build_simulator, compare_outputs, float_outputs,
                     quantize_inputs, reference_outputs, run_simulator, temporary_workdir)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("bonsai_mcu")
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    root.propagate = False


def _errors_to_exit(command):
    """Print a BonsaiError as one line on stderr and exit with status 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BonsaiError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
    return wrapper


def _quant_options(method: str, granularity: str, group_size: int, int8_layers: str,
                   weights: str = "ternary") -> QuantOptions:
    if group_size < 1:
        raise BonsaiError(f"--group-size {group_size}: must be a positive number of weights")
    names = {name.strip() for name in int8_layers.split(",") if name.strip()} if int8_layers else set()
    return QuantOptions(method=method, granularity=granularity, group_size=group_size, int8_layers=names,
                        weights=weights)


def quant_options(command):
    """Options shared by the commands that compile a model."""
    options = [
        click.option("--target", "-t", default="host", show_default=True,
                     help=f"Target core: one of {', '.join(available_targets())}, or a TOML file."),
        click.option("--name", "-n", default=None,
                     help="C prefix of every public symbol [default: the model file name]."),
        click.option("--calibration", "-c", type=click.Path(dir_okay=False), default=None,
                     help="Calibration samples (.npy or .npz); without it a synthetic distribution is used, "
                          "unless QDQ or QONNX nodes in the model give every activation's scale."),
        click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
                     help="Ternarization rule: exact import where weights are already ternary, else twn (auto)."),
        click.option("--granularity", type=click.Choice(GRANULARITIES), default="auto", show_default=True,
                     help="Scale per output channel, per tensor, or per group of --group-size weights."),
        click.option("--group-size", type=int, default=128, show_default=True,
                     help="Weights per scale group with --granularity group."),
        click.option("--keep-int8", "--int8-layers", "int8_layers", default="",
                     help="Layers whose weights stay int8 instead of ternary, comma-separated: node names, "
                          "or first and last for the first and last Conv, Gemm or MatMul."),
        click.option("--weights", type=click.Choice(PRECISIONS), default="ternary", show_default=True,
                     help="Precision of every Conv, Gemm and MatMul; float32 keeps weights and activations "
                          "in float for the whole model (no calibration, float inputs and outputs)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(epilog="Run 'bonsai-mcu COMMAND --help' for the options of each command.")
@click.version_option(__version__, prog_name="bonsai-mcu")
@click.option("--quiet", "-q", is_flag=True, help="Print errors only.")
def main(quiet: bool) -> None:
    """Compile ONNX models into ternary-weight C99 for microcontrollers."""
    _setup_logging(quiet)


@main.command(epilog="""\b
Examples:
  bonsai-mcu generate model.onnx -o out/kws --target cortex-m4 --calibration samples.npy
  bonsai-mcu generate model.onnx -o out/m --name detector --granularity per-channel
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--output", "-o", "output", type=click.Path(file_okay=False), required=True,
              help="Output folder; sources go to OUTPUT/src/.")
@click.option("--force", is_flag=True, help="Write into a non-empty folder that bonsai-mcu did not create.")
@click.option("--package", "package", default="all", show_default=True,
              help=f"Library manifests to write next to src/: comma-separated {', '.join(ECOSYSTEMS)}, "
                   "or all, or none.")
@click.option("--package-version", default="1.0.0", show_default=True,
              help="Library version written into the manifests (MAJOR.MINOR.PATCH).")
@click.option("--package-url", default="",
              help="Web page of the library for the manifests [default: none; Arduino gets the output folder].")
@click.option("--extra-scratch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bytes by which kernel scratch may make the arena larger than a plain tensor-by-tensor plan, "
                   "for faster kernels (the tables of fully connected layers).")
@quant_options
@click.pass_context
@_errors_to_exit
def generate(ctx, model, output, force, package, package_version, package_url, extra_scratch, target, name,
             calibration, method, granularity, group_size, int8_layers, weights):
    """Generate C sources for MODEL (ONNX) into OUTPUT, with library manifests."""
    ecosystems = parse_ecosystems(package)
    target_spec = load_target(target)
    compiled = compile_model(model, target_spec, name,
                             _quant_options(method, granularity, group_size, int8_layers, weights), calibration,
                             extra_scratch)
    lines = summary_lines(compiled)
    extra = {"report.txt": "\n".join(lines) + "\n"}
    extra.update(package_files(compiled, ecosystems, output, package_version, package_url))
    written = write_output(compiled.files, output, force, extra=extra)
    quiet = ctx.find_root().params.get("quiet")
    if not quiet:
        for line in lines:
            click.echo(line)
        click.echo(f"wrote {len(written)} files to {output}")


@main.command(epilog="""\b
Examples:
  bonsai-mcu verify model.onnx --inputs samples.npy --calibration calib.npy
  bonsai-mcu verify model.onnx --inputs samples.npz --keep build/verify
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--inputs", "-i", "inputs_path", type=click.Path(dir_okay=False), required=True,
              help="Samples to run (.npy or .npz, samples along the batch axis).")
@click.option("--cc", default=None, help="Host C compiler [default: $CC, else cc].")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the simulator build in this folder.")
@click.option("--task", type=click.Choice(["auto", "classify", "regress"]), default="auto", show_default=True,
              help="Report top-1 agreement for class scores (auto: guessed from the output).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Class labels of the inputs (.npy, integers, one per sample): report the accuracy of the "
                   "float model and of the quantized model against them.")
@click.option("--on", "on", type=click.Choice(["host", "qemu"]), default="host", show_default=True,
              help="qemu also runs the C cross-compiled for --target on its emulated core and compares "
                   "it with the host simulator, bit for bit, and counts instructions per inference.")
@quant_options
@click.pass_context
@_errors_to_exit
def verify(ctx, model, inputs_path, cc, keep, task, labels, on, target, name, calibration, method, granularity, group_size,
           int8_layers, weights):
    """Check the generated C against the reference, bit for bit, and the float model."""
    target_spec = load_target(target)
    compiled = compile_model(model, target_spec, name,
                             _quant_options(method, granularity, group_size, int8_layers, weights), calibration)
    graph = compiled.graph
    samples = load_samples(inputs_path, graph)
    inputs = quantize_inputs(graph, samples)
    expected = reference_outputs(graph, Progress(inputs, "reference"))

    workdir, holder = temporary_workdir(Path(keep) if keep else None)
    try:
        executable = build_simulator(compiled.files, graph, workdir, cc)
        actual = run_simulator(executable, graph, inputs)
    finally:
        if holder is not None:
            holder.cleanup()
    # float32 C rounds differently from the float64 reference: compare with a tolerance.
    float_mode = is_float_graph(graph)
    tolerance = {"rtol": FLOAT_RTOL, "atol": FLOAT_ATOL} if float_mode else {}
    mismatches = compare_outputs(expected, actual, **tolerance)

    float_results, runtime = float_outputs(Path(model), graph, Progress(samples, "float model"))
    report = agreement(graph, float_results, expected, task)

    for line in summary_lines(compiled):
        click.echo(line)
    agreeing = f"within rtol {FLOAT_RTOL:g}, atol {FLOAT_ATOL:g}" if float_mode else "bit-exact"
    click.echo(f"host C vs reference: {len(samples) - len({m.sample for m in mismatches})}/{len(samples)} "
               f"samples {agreeing}")
    for entry in report:
        text = (f"reference vs float ({runtime}), output '{entry.output}': cosine {entry.cosine:.4f}, "
                f"RMSE {entry.rmse:.4g}, max abs error {entry.max_abs_error:.4g}")
        if entry.top1 is not None:
            text += f", top-1 agreement {entry.top1 * 100:.1f}%"
        click.echo(text)
    if labels:
        accuracy = label_accuracy(graph, load_labels(labels, len(samples)), float_results, actual)
        click.echo(f"accuracy against {labels}: float model {accuracy[0] * 100:.1f}%, "
                   f"quantized C {accuracy[1] * 100:.1f}% ({len(samples)} samples, output 0)")
    if on == "qemu":
        mismatches += verify_on_qemu(compiled, inputs, actual, Path(keep) / "qemu" if keep else None)
    if mismatches:
        first = mismatches[0]
        raise BonsaiError(f"{len(mismatches)} output(s) differ between host C and reference; first: sample "
                          f"{first.sample}, output {first.output}, element {first.index}: reference "
                          f"{first.expected}, C {first.actual}")


@main.command(epilog="""\b
Examples:
  bonsai-mcu inspect model.onnx
  bonsai-mcu inspect model.onnx --granularity per-channel
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="auto", show_default=True,
              help="Scale granularity assumed for the weight-size estimate.")
@click.option("--group-size", type=int, default=128, show_default=True, help="Weights per scale group.")
@_errors_to_exit
def inspect(model, granularity, group_size):
    """Print ops, shapes, parameters, MACs, weight precision and memory of MODEL."""
    graph = import_onnx(model)
    plan = plan_graph(graph)
    options = QuantOptions(granularity=granularity, group_size=group_size)
    header = f"{'#':>3}  {'op':<12} {'name':<28} {'output':<18} {'params':>8} {'MACs':>10}  {'weights':<22} {'bytes':>7}"
    click.echo(f"model: {model}")
    click.echo(header)
    total_bytes = 0
    for row, node in zip(layer_rows(graph), graph.nodes):
        precision, size = "", ""
        if node.op in WEIGHTED_OPS:
            chosen, chosen_group_size = choose_layout(options, node.weights.reshape(node.weights.shape[0], -1),
                                                      node.attrs.get("group_size"))
            count = node.weights.size
            scales = {"per-tensor": 1, "per-channel": node.weights.shape[0]}.get(
                chosen, node.weights.shape[0] * -(-(count // node.weights.shape[0]) // chosen_group_size))
            nbytes = -(-count // 5) + 4 * scales
            total_bytes += nbytes
            precision, size = f"ternary {chosen}", f"{nbytes:,}"
        name = row["name"] if len(row["name"]) <= 28 else row["name"][:25] + "..."
        click.echo(f"{row['index']:>3}  {row['op']:<12} {name:<28} {str(list(row['output'])):<18} "
                   f"{row['params']:>8,} {row['macs']:>10,}  {precision:<22} {size:>7}")
    macs = sum(node_macs(n, graph) for n in graph.nodes)
    params = sum(r["params"] for r in layer_rows(graph))
    click.echo(f"total: {params:,} parameters, {macs:,} MACs, ternary weights and scales {total_bytes:,} B, "
               f"arena {plan.arena_size:,} B (lower bound {plan.lower_bound:,} B)")


def verify_on_qemu(compiled, inputs, host_outputs, workdir) -> list:
    """Run the samples on the target's emulated core; print counts; return mismatches with the host."""
    from .ir import node_macs as _node_macs
    from .onboard import run_on_qemu

    result = run_on_qemu(compiled, inputs, workdir)
    mismatches = compare_outputs(host_outputs, result.outputs)
    samples = len(inputs)
    exact = samples - len({m.sample for m in mismatches})
    machine = compiled.target.qemu.get("machine", "")
    click.echo(f"{compiled.target.name} C under QEMU ({machine}) vs host C: {exact}/{samples} samples bit-exact")
    macs = sum(_node_macs(node, compiled.graph) for node in compiled.graph.nodes)
    mean = sum(result.instructions) / max(len(result.instructions), 1)
    per_mac = f", {mean / macs:.2f} per MAC" if macs else ""
    click.echo(f"instructions per inference on {compiled.target.name}: {mean:,.0f} (mean of {samples}){per_mac}")
    return mismatches


@main.command(epilog="""\b
Examples:
  bonsai-mcu size model.onnx --target cortex-m4
  bonsai-mcu size model.onnx --target esp32c3 --calibration samples.npy
""")
@click.argument("model", type=click.Path(dir_okay=False))
@quant_options
@_errors_to_exit
def size(model, target, name, calibration, method, granularity, group_size, int8_layers, weights):
    """Print flash and RAM of MODEL's generated C, cross-compiled for --target."""
    from .onboard import footprint_lines, measure_footprint

    target_spec = load_target(target)
    compiled = compile_model(model, target_spec, name,
                             _quant_options(method, granularity, group_size, int8_layers, weights), calibration)
    footprint = measure_footprint(compiled)
    click.echo(f"model: {model} -> {compiled.name} (target {target_spec.name}, {target_spec.cc})")
    for line in footprint_lines(footprint):
        click.echo(line)


@main.command(epilog="""\b
Examples:
  bonsai-mcu report model.onnx --target cortex-m4 --board nucleo-f446re -o report.html
  bonsai-mcu report model.onnx --board esp32dev --calibration calib.npy --inputs samples.npy
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="HTML file to write.")
@click.option("--inputs", "-i", "inputs_path", type=click.Path(dir_okay=False), default=None,
              help="Samples (.npy or .npz) for the float-versus-quantized agreement.")
@click.option("--board", default=None,
              help="Board whose flash and RAM budget to compare with ([board.NAME] in targets/*.toml); "
                   "it also sets --target when that is not given.")
@quant_options
@click.pass_context
@_errors_to_exit
def report(ctx, model, output, inputs_path, board, target, name, calibration, method, granularity, group_size,
           int8_layers, weights):
    """Write an HTML report of MODEL: layers, arena timeline, flash and RAM, agreement."""
    from .report import build_report, find_board, text_summary, write_report

    board_spec = find_board(board) if board else None
    if board_spec is not None:
        if ctx.get_parameter_source("target") == click.core.ParameterSource.DEFAULT:
            target = board_spec.target
        elif load_target(target).name != board_spec.target:
            raise BonsaiError(f"--board {board_spec.name}: its core is {board_spec.target}, not {target}; "
                              f"pass --target {board_spec.target} or leave --target out")
    compiled = compile_model(model, load_target(target), name,
                             _quant_options(method, granularity, group_size, int8_layers, weights), calibration)
    result = build_report(compiled, model, board_spec, inputs_path)
    written = write_report(result, output)
    if not ctx.find_root().params.get("quiet"):
        for line in text_summary(result):
            click.echo(line)
        click.echo(f"wrote {written}")


@main.command(epilog="""\b
Examples:
  bonsai-mcu bench
  bonsai-mcu bench --target cortex-m4 --repeats 3 -o /tmp/bench.md
""")
@click.option("--target", "-t", "targets", multiple=True,
              help="Target to measure (repeatable) [default: cortex-m4, cortex-m7, cortex-m55, esp32c3].")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="BENCHMARKS.md", show_default=True,
              help="Markdown file to write.")
@click.option("--repeats", type=click.IntRange(1, 50), default=10, show_default=True,
              help="Runs of each case; figures are means.")
@click.option("--models", type=click.Path(file_okay=False), default=None,
              help="Folder of the shared reference models [default: ../shared/models beside the repository].")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the generated sources and firmware in this folder.")
@_errors_to_exit
def bench(targets, output, repeats, models, keep):
    """Measure instructions per layer and per inference on emulated cores; write BENCHMARKS.md."""
    from .bench import SHARED_MODELS, TARGETS, command_line, run_bench

    run_bench(list(targets) or list(TARGETS), Path(output), repeats, Path(models) if models else SHARED_MODELS,
              Path(keep) if keep else None, command_line())
    click.echo(f"wrote {output}")
