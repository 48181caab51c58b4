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
from .pipeline import (Progress, check_output_file, check_parent_folders, claim_folder, compile_model, layer_rows,
                       summary_lines, write_output)
from .plan import plan_graph
from .quantize import GRANULARITIES, METHODS, PRECISIONS, QuantOptions, is_float_graph
from .targets import available_targets, load_target
from .verify import (label_accuracy, load_labels, FLOAT_ATOL, FLOAT_RTOL, FloatModelError, agreement, build_simulator,
                     compare_outputs, float_outputs, quantize_inputs, reference_outputs, run_simulator,
                     temporary_workdir)

log = logging.getLogger("bonsai_mcu")


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
    check_parent_folders(output, "-o")
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
    """Check the generated C against the reference, bit for bit, and the float model.

    With bonsai-mcu --quiet, only errors are printed, as for generate, and the exit status gives the result.
    """
    quiet = ctx.find_root().params.get("quiet")
    echo = (lambda text: None) if quiet else click.echo
    target_spec = load_target(target)
    if on == "qemu":
        from .onboard import check_qemu_board

        if weights == "float32":
            raise BonsaiError("--weights float32 with --on qemu: float32 models do not run under QEMU yet; "
                              "use --on host")
        check_qemu_board(target_spec)
    if keep:
        claim_folder(keep, "--keep")
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

    try:
        float_results, runtime = float_outputs(Path(model), graph, Progress(samples, "float model"))
        report = agreement(graph, float_results, expected, task)
    except FloatModelError as error:
        log.warning("%s; skipping the agreement with the float model", error)
        float_results, runtime, report = None, "", []

    for line in summary_lines(compiled):
        echo(line)
    agreeing = f"within rtol {FLOAT_RTOL:g}, atol {FLOAT_ATOL:g}" if float_mode else "bit-exact"
    echo(f"host C vs reference: {len(samples) - len({m.sample for m in mismatches})}/{len(samples)} "
         f"samples {agreeing}")
    for entry in report:
        text = (f"reference vs float ({runtime}), output '{entry.output}': cosine {entry.cosine:.4f}, "
                f"RMSE {entry.rmse:.4g}, max abs error {entry.max_abs_error:.4g}")
        if entry.top1 is not None:
            text += f", top-1 agreement {entry.top1 * 100:.1f}%"
        echo(text)
    if labels:
        float_accuracy, quantized_accuracy = label_accuracy(graph, load_labels(labels, len(samples)), float_results,
                                                            actual)
        float_text = f"float model {float_accuracy * 100:.1f}%, " if float_accuracy is not None else ""
        echo(f"accuracy against {labels}: {float_text}quantized C {quantized_accuracy * 100:.1f}% "
             f"({len(samples)} samples, output 0)")
    # The QEMU build shares KEEP/src with the host build and puts its firmware in KEEP/qemu.
    qemu_mismatches = verify_on_qemu(compiled, inputs, actual, Path(keep) if keep else None, echo) \
        if on == "qemu" else []
    if mismatches:
        raise BonsaiError(mismatch_message(mismatches, "host C", "reference"))
    if qemu_mismatches:
        raise BonsaiError(mismatch_message(qemu_mismatches, f"{compiled.target.name} C under QEMU", "host C"))


def mismatch_message(mismatches: list, actual_name: str, expected_name: str) -> str:
    first = mismatches[0]
    return (f"{len(mismatches)} output(s) differ between {actual_name} and {expected_name}; first: sample "
            f"{first.sample}, output {first.output}, element {first.index}: {expected_name} {first.expected}, "
            f"{actual_name} {first.actual}")


@main.command(epilog="""\b
Examples:
  bonsai-mcu inspect model.onnx
  bonsai-mcu inspect model.onnx --target cortex-m4 --granularity per-channel
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", default="host", show_default=True,
              help=f"Target core whose kernels set the arena and weight layouts: one of "
                   f"{', '.join(available_targets())}, or a TOML file.")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="auto", show_default=True,
              help="Scale granularity assumed for the weight-size estimate.")
@click.option("--group-size", type=int, default=128, show_default=True, help="Weights per scale group.")
@click.option("--keep-int8", "--int8-layers", "int8_layers", default="",
              help="Layers whose weights stay int8, as for generate: node names (the name column) or first, last.")
@click.option("--extra-scratch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bytes by which kernel scratch may make the arena larger, as for generate.")
@_errors_to_exit
def inspect(model, target, granularity, group_size, int8_layers, extra_scratch):
    """Print ops, shapes, parameters, MACs, weight precision and memory of MODEL."""
    from .kernels import choose_kernels
    from .pipeline import weight_storage, weight_summary
    from .quantize import quantize, synthetic_calibration

    target_spec = load_target(target)
    graph = import_onnx(model)
    # Weight bytes and the arena do not depend on activation ranges, so synthetic
    # samples stand in for calibration data, without generate's warning about them.
    quantize(graph, _quant_options("auto", granularity, group_size, int8_layers), synthetic_calibration(graph))
    kernels = choose_kernels(graph, target_spec, extra_scratch)
    plan = plan_graph(graph, max(target_spec.alignment, 4), kernels)
    weights = weight_summary(graph, kernels)

    header = f"{'#':>3}  {'op':<12} {'output':<18} {'params':>8} {'MACs':>10}  {'weights':<22} {'bytes':>7}  name"
    click.echo(f"model: {model} (target {target_spec.name})")
    click.echo(header)
    for row, node, choice in zip(layer_rows(graph), graph.nodes, kernels):
        size = ""
        if node.op in WEIGHTED_OPS:
            nbytes = weight_storage(node)
            # dense_lut reads its own layout of the trits (rows padded to whole bytes).
            if node.quant["format"] == "ternary" and choice.kernel == "dense_lut":
                nbytes = int(choice.data["weights"].size) + 4 * int(node.quant["multipliers"].size)
            size = f"{nbytes:,}"
        click.echo(f"{row['index']:>3}  {row['op']:<12} {str(list(row['output'])):<18} {row['params']:>8,} "
                   f"{row['macs']:>10,}  {row['precision']:<22} {size:>7}  {row['name']}")
    macs = sum(node_macs(n, graph) for n in graph.nodes)
    params = sum(r["params"] for r in layer_rows(graph))
    weight_bytes = weights["ternary_packed"] + weights["ternary_scales"] + weights["int8_bytes"]
    click.echo(f"total: {params:,} parameters, {macs:,} MACs, weights and scales {weight_bytes:,} B, "
               f"bias {weights['bias_bytes']:,} B, arena {plan.arena_size:,} B (lower bound {plan.lower_bound:,} B)")


def verify_on_qemu(compiled, inputs, host_outputs, workdir, echo=click.echo) -> list:
    """Run the samples on the target's emulated core; print counts with `echo`; return mismatches with the host."""
    from .ir import node_macs as _node_macs
    from .onboard import run_on_qemu

    result = run_on_qemu(compiled, inputs, workdir)
    mismatches = compare_outputs(host_outputs, result.outputs)
    samples = len(inputs)
    exact = samples - len({m.sample for m in mismatches})
    machine = compiled.target.qemu.get("machine", "")
    echo(f"{compiled.target.name} C under QEMU ({machine}) vs host C: {exact}/{samples} samples bit-exact")
    macs = sum(_node_macs(node, compiled.graph) for node in compiled.graph.nodes)
    mean = sum(result.instructions) / max(len(result.instructions), 1)
    per_mac = f", {mean / macs:.2f} per MAC" if macs else ""
    echo(f"instructions per inference on {compiled.target.name}: {mean:,.0f} (mean of {samples}){per_mac}")
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
    if not target_spec.weights_section:
        cross = [spec for spec in available_targets() if load_target(spec).weights_section]
        raise BonsaiError(f"size needs a cross target, not {target_spec.name}: pass --target (one of "
                          f"{', '.join(cross)})")
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
  bonsai-mcu report model.onnx --target cortex-m4 --measure --inputs samples.npy
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="HTML file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing -o file that bonsai-mcu did not write.")
@click.option("--inputs", "-i", "inputs_path", type=click.Path(dir_okay=False), default=None,
              help="Samples (.npy or .npz) for the float-versus-quantized agreement.")
@click.option("--board", default=None,
              help="Board whose flash and RAM budget to compare with ([board.NAME] in targets/*.toml); "
                   "it also sets --target when that is not given.")
@click.option("--measure", is_flag=True,
              help="Count the instructions of each layer on the target's QEMU board, on the first sample of "
                   "--inputs or, without it, on one standard-normal sample (seed 0).")
@quant_options
@click.pass_context
@_errors_to_exit
def report(ctx, model, output, force, inputs_path, board, measure, target, name, calibration, method, granularity,
           group_size, int8_layers, weights):
    """Write an HTML report of MODEL: layers, arena timeline, flash and RAM, agreement."""
    from .report import build_report, find_board, text_summary, write_report

    check_output_file(output, "-o", model, force)
    board_spec = find_board(board) if board else None
    if board_spec is not None:
        if ctx.get_parameter_source("target") == click.core.ParameterSource.DEFAULT:
            target = board_spec.target
        elif load_target(target).name != board_spec.target:
            raise BonsaiError(f"--board {board_spec.name}: its core is {board_spec.target}, not {target}; "
                              f"pass --target {board_spec.target} or leave --target out")
    compiled = compile_model(model, load_target(target), name,
                             _quant_options(method, granularity, group_size, int8_layers, weights), calibration)
    result = build_report(compiled, model, board_spec, inputs_path, measure)
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
@click.option("--force", is_flag=True, help="Overwrite an existing -o file that bonsai-mcu did not write.")
@click.option("--repeats", type=click.IntRange(1, 50), default=10, show_default=True,
              help="Runs of each case; figures are means.")
@click.option("--models", type=click.Path(file_okay=False), default=None,
              help="Folder of the shared reference models [default: ../shared/models beside the repository].")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the generated sources and firmware in this folder.")
@click.pass_context
@_errors_to_exit
def bench(ctx, targets, output, force, repeats, models, keep):
    """Measure instructions per layer and per inference on emulated cores; write BENCHMARKS.md."""
    from .bench import SHARED_MODELS, TARGETS, command_line, run_bench

    check_output_file(output, "-o", force=force)
    if keep:
        claim_folder(keep, "--keep")
    run_bench(list(targets) or list(TARGETS), Path(output), repeats, Path(models) if models else SHARED_MODELS,
              Path(keep) if keep else None, command_line())
    if not ctx.find_root().params.get("quiet"):
        click.echo(f"wrote {output}")
