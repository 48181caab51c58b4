"""Conformance: ONNX's own operator tests through the float32 C and the reference.

Every test case shipped with the onnx package (the node cases that
onnx.backend.test.case generates, and the models with data sets under
onnx/backend/test/data/pytorch-converted and pytorch-operator) is imported,
generated with --weights float32, built into the host simulator and run on
the test's inputs. A case passes when both the C outputs and the numpy
reference (reference.run_float) match the test's expected outputs within
its tolerance, widened to at least MIN_RTOL and MIN_ATOL for float32
accumulation. A case the importer rejects is skipped with the importer's
reason.

Two rewrites let the importer accept cases written for other runtimes:
node tests feed weights and shapes as graph inputs, which the importer
requires as constants, so such a case is retried with every graph input but
the first frozen into an initializer holding the data set's value; a model
of one input with a batch of N samples (the generated C runs one sample per
call) is retried with batch 1 on each sample, expecting slice i of every
output.

Usage: python -m bonsai_mcu.conformance --out docs/conformance.md
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import click
import numpy as np
import onnx
from onnx import numpy_helper

from . import BonsaiError, __version__
from .codegen import render
from .importer import UnsupportedModelError, import_onnx
from .ir import Graph
from .plan import plan_graph
from .quantize import QuantOptions, quantize
from .reference import run_float
from .targets import load_target
from .verify import build_simulator, run_simulator

log = logging.getLogger(__name__)

SUITES = ("node", "pytorch-converted", "pytorch-operator")

# Lowest tolerances used: float32 sums in another order than the test's own
# computation differ by a few units in the last place, so relative 1e-3 and
# absolute 1e-5 (outputs near 0) are the floor.
MIN_RTOL = 1e-3
MIN_ATOL = 1e-5

# C prefix of every conformance build.
MODEL_NAME = "conformance"

# Importer messages that mean a graph input would have to be a constant.
NEEDS_CONSTANTS = ("must be a constant", "only float32 inputs are supported")
# Importer message that means the model's batch is larger than 1.
NEEDS_BATCH_1 = "batch size"


@dataclass
class Case:
    suite: str
    name: str
    model: onnx.ModelProto
    # One (inputs, expected outputs) pair per data set, in graph input/output order.
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]
    rtol: float = MIN_RTOL
    atol: float = MIN_ATOL

    @property
    def ops(self) -> list[str]:
        return sorted({node.op_type for node in self.model.graph.node})


@dataclass
class Result:
    suite: str
    name: str
    ops: list[str]
    status: str  # "passed", "skipped" or "failed"
    reason: str = ""
    notes: list[str] = field(default_factory=list)


# -- collecting the cases ------------------------------------------------------


def _data_dir() -> Path:
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"


def _numbered(paths, prefix: str) -> list[Path]:
    """Sort input_0.pb, input_1.pb, ..., input_10.pb by their number."""
    return sorted(paths, key=lambda p: int(re.sub(r"\D", "", p.stem[len(prefix):]) or 0))


def _load_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _folder_cases(suite: str) -> list[Case]:
    cases = []
    root = _data_dir() / suite
    if not root.is_dir():
        log.warning("onnx %s ships no %s folder; its cases are left out", onnx.__version__, root)
        return cases
    for folder in sorted(p for p in root.iterdir() if (p / "model.onnx").is_file()):
        data_sets = []
        for data in sorted(folder.glob("test_data_set_*")):
            inputs = [_load_tensor(p) for p in _numbered(data.glob("input_*.pb"), "input_")]
            outputs = [_load_tensor(p) for p in _numbered(data.glob("output_*.pb"), "output_")]
            data_sets.append((inputs, outputs))
        cases.append(Case(suite, folder.name, onnx.load(str(folder / "model.onnx")), data_sets))
    return cases


@lru_cache(maxsize=1)
def _node_cases() -> tuple[Case, ...]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        # The generators of some cases (Cast to float8, log of 0) warn about their own values.
        warnings.simplefilter("ignore")
        collected = collect_testcases(None)
    cases = []
    for test in collected:
        if test.model is None or not test.data_sets:
            continue
        data_sets = [(list(inputs), list(outputs)) for inputs, outputs in test.data_sets]
        cases.append(Case("node", test.name, test.model, data_sets,
                          max(test.rtol, MIN_RTOL), max(test.atol, MIN_ATOL)))
    return tuple(cases)


def collect_cases(suites=SUITES, match: str = "") -> list[Case]:
    """Return the test cases of `suites` whose name contains `match`."""
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise BonsaiError(f"unknown conformance suite {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    cases: list[Case] = []
    for suite in suites:
        cases.extend(_node_cases() if suite == "node" else _folder_cases(suite))
    return [case for case in cases if match in case.name]


# -- running one case ----------------------------------------------------------


def _dynamic_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    constants = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in constants]


def freeze_inputs(model: onnx.ModelProto, inputs: list[np.ndarray]) -> onnx.ModelProto:
    """Return a copy of `model` whose graph inputs after the first are initializers holding `inputs`."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    dynamic = _dynamic_inputs(model)
    keep = {dynamic[0].name} if dynamic else set()
    for value, array in zip(dynamic[1:], inputs[1:]):
        if not isinstance(array, (np.ndarray, np.generic)):
            raise BonsaiError(f"input '{value.name}' is a {type(array).__name__}, not a tensor")
        frozen.graph.initializer.append(numpy_helper.from_array(np.asarray(array), value.name))
    remaining = [value for value in frozen.graph.input if value.name in keep
                 or value.name in {init.name for init in model.graph.initializer}]
    del frozen.graph.input[:]
    frozen.graph.input.extend(remaining)
    return frozen


def split_batch(model: onnx.ModelProto, data_sets) -> tuple[onnx.ModelProto, list]:
    """Return `model` with batch 1 and one data set per sample of every data set.

    The model must have one graph input; every output must have the input's
    batch size as its first dimension, so that sample i's output is slice i.
    """
    (value,) = _dynamic_inputs(model)
    batch = value.type.tensor_type.shape.dim[0].dim_value
    split = onnx.ModelProto()
    split.CopyFrom(model)
    del split.graph.value_info[:]
    for info in [v for v in split.graph.input if v.name == value.name] + list(split.graph.output):
        dims = info.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != batch:
            raise BonsaiError(f"'{info.name}' does not have the batch size {batch} as first dimension")
        dims[0].dim_value = 1
    samples = []
    for inputs, outputs in data_sets:
        for i in range(batch):
            samples.append(([np.asarray(inputs[0])[i:i + 1]], [np.asarray(array)[i:i + 1] for array in outputs]))
    return split, samples


def _import(model: onnx.ModelProto, workdir: Path) -> Graph:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model.onnx"
    onnx.save(model, str(path))
    return import_onnx(path, MODEL_NAME)


def _reason(error: BonsaiError, workdir: Path) -> str:
    """Return the importer's message without the temporary file's path."""
    if isinstance(error, UnsupportedModelError):
        return "; ".join(f"{op} node '{name}': {reason}" for op, name, reason in error.problems)
    return str(error).replace(f"{workdir / 'model.onnx'}: ", "")


def _feeds(graph: Graph, model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Return the graph's physical float inputs from one data set's ONNX inputs."""
    by_name = {value.name: array for value, array in zip(_dynamic_inputs(model), inputs)}
    feeds = []
    for name, onnx_name in zip(graph.inputs, graph.onnx_inputs):
        tensor = graph.tensors[name]
        array = np.asarray(by_name[onnx_name])
        if array.size != tensor.size:
            raise BonsaiError(f"input '{onnx_name}' of the data set has shape {list(array.shape)}; the model "
                              f"declares {list(tensor.logical_shape)}")
        feeds.append(tensor.to_physical(array.reshape(tensor.logical_shape)).astype(np.float32).reshape(-1))
    return feeds


def _first_difference(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    if got.shape != want.shape:
        return f"shape {list(got.shape)}, expected {list(want.shape)}"
    close = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return ""
    index = np.unravel_index(int(np.flatnonzero(~close)[0]), want.shape)
    worst = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
    return (f"{int((~close).sum())} of {want.size} values differ; first at {list(map(int, index))}: "
            f"{float(got[index]):.9g}, expected {float(want[index]):.9g} (largest difference {worst:.3g})")


def _check(case: Case, model: onnx.ModelProto, graph: Graph, data_sets, workdir: Path, cc: str | None) -> str:
    """Build and run the float32 C and the reference on `data_sets`; return the first failure or ''."""
    quantize(graph, QuantOptions(weights="float32"), None)
    target = load_target("host")
    plan = plan_graph(graph, max(target.alignment, 4))
    files = render(graph, plan, target, graph.name)
    feeds = [_feeds(graph, model, inputs) for inputs, _ in data_sets]
    executable = build_simulator(files, graph, workdir / "build", cc)
    c_outputs = run_simulator(executable, graph, feeds, timeout=60.0)

    output_names = [value.name for value in model.graph.output]
    missing = set(output_names) - set(graph.onnx_outputs)
    if missing:
        return f"outputs {sorted(missing)} are not produced"
    for index, ((_, expected), feed, c_row) in enumerate(zip(data_sets, feeds, c_outputs)):
        reference = run_float(graph, feed)
        for name, onnx_name, c_values in zip(graph.outputs, graph.onnx_outputs, c_row):
            tensor = graph.tensors[name]
            want = np.asarray(expected[output_names.index(onnx_name)])
            for who, values in (("C", c_values), ("reference", reference[name])):
                got = tensor.to_logical(values)
                difference = _first_difference(got, want, case.rtol, case.atol)
                if difference:
                    return f"data set {index}, output '{onnx_name}', {who}: {difference}"
    return ""


def prepare_case(case: Case, workdir: Path, notes: list[str]) -> list[tuple[onnx.ModelProto, Graph, list]]:
    """Import the case, rewritten if needed; return (model, graph, data sets) to run."""
    try:
        return [(case.model, _import(case.model, workdir), case.data_sets)]
    except BonsaiError as error:
        dynamic_count = len(_dynamic_inputs(case.model))
        if dynamic_count == 1 and NEEDS_BATCH_1 in str(error):
            try:
                model, data_sets = split_batch(case.model, case.data_sets)
            except BonsaiError:
                raise error from None
            notes.append("compiled with batch 1, run on each sample")
            return [(model, _import(model, workdir), data_sets)]
        if dynamic_count < 2 or not any(text in str(error) for text in NEEDS_CONSTANTS):
            raise

    # Weights and shapes given as graph inputs: one model per data set with them as constants.
    attempts = []
    for inputs, outputs in case.data_sets:
        frozen = freeze_inputs(case.model, inputs)
        attempts.append((frozen, _import(frozen, workdir), [(inputs[:1], outputs)]))
    names = ", ".join(value.name for value in _dynamic_inputs(case.model)[1:])
    notes.append(f"inputs {names} compiled as constants")
    return attempts


def run_case(case: Case, workdir: Path, cc: str | None = None) -> Result:
    """Import, generate, build and run one case; return whether it passed, was skipped or failed."""
    result = Result(case.suite, case.name, case.ops, "passed")
    try:
        for model, graph, data_sets in prepare_case(case, workdir, result.notes):
            failure = _check(case, model, graph, data_sets, workdir, cc)
            if failure:
                result.status, result.reason = "failed", failure
                break
    except BonsaiError as error:
        reason = _reason(error, workdir)
        # Build and run errors of accepted models are failures; anything the pipeline rejects is a skip.
        failed = reason.startswith(("host build failed", "host simulator"))
        result.status, result.reason = ("failed" if failed else "skipped"), reason
    return result


def run_cases(cases: list[Case], workdir: Path, cc: str | None = None, progress=None) -> list[Result]:
    results = []
    for index, case in enumerate(cases):
        results.append(run_case(case, workdir / f"case{index}", cc))
        if progress is not None:
            progress(results[-1])
    return results


# -- the table -----------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def op_summary(results: list[Result]) -> dict[str, Counter]:
    """Count passed, skipped and failed cases per ONNX op type that the cases contain."""
    summary: dict[str, Counter] = {}
    for result in results:
        for op in result.ops:
            summary.setdefault(op, Counter())[result.status] += 1
    return summary


def markdown(results: list[Result], command: str) -> str:
    counts = Counter(result.status for result in results)
    summary = op_summary(results)
    passing_ops = sorted(op for op, count in summary.items() if count["passed"])
    alone = {result.ops[0] for result in results if result.status == "passed" and len(result.ops) == 1}
    combined_only = [op for op in passing_ops if op not in alone]
    lines = [
        "# Conformance with ONNX's operator tests",
        "",
        f"Generated by `{command}` (bonsai-mcu {__version__}, onnx {onnx.__version__}); do not edit by hand.",
        "",
        "Each test case shipped with the onnx package is imported, generated with `--weights float32`, built",
        "into the host simulator and run on the test's inputs. It passes when the C outputs and the numpy",
        f"reference both match the expected outputs within the test's tolerance (at least rtol {MIN_RTOL:g},",
        f"atol {MIN_ATOL:g}). A case the importer rejects is skipped with the importer's reason. Node tests",
        "that pass weights or shapes as graph inputs are compiled with those inputs as constants, and a",
        "one-input model with a batch of N samples is compiled with batch 1 and run on each sample.",
        "",
        f"{len(results)} cases: {counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed.",
        "",
        f"Ops in a passing case: {', '.join(passing_ops) or 'none'}.",
        f"Ops that pass only together with others: {', '.join(combined_only) or 'none'} (for example on",
        "constants, which the importer folds at generation time).",
        "",
        "## Per op",
        "",
        "Cases that contain the op (a case with several ops counts for each).",
        "",
        "| op | passed | skipped | failed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for op in sorted(summary):
        count = summary[op]
        lines.append(f"| {op} | {count['passed']} | {count['skipped']} | {count['failed']} |")

    for suite in SUITES:
        rows = sorted((r for r in results if r.suite == suite), key=lambda r: r.name)
        if not rows:
            continue
        lines += ["", f"## {suite}", "", "| test | ops | result | reason |", "| --- | --- | --- | --- |"]
        for row in rows:
            reason = "; ".join(row.notes + ([row.reason] if row.reason else []))
            lines.append(f"| {row.name} | {_cell(', '.join(row.ops))} | {row.status} | {_cell(reason)} |")
    return "\n".join(lines) + "\n"


@click.command(epilog="""\b
Examples:
  python -m bonsai_mcu.conformance --out docs/conformance.md
  python -m bonsai_mcu.conformance --suite node --match conv
""")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the Markdown table to this file [default: print a summary only].")
@click.option("--suite", "suites", multiple=True, type=click.Choice(SUITES),
              help="Suite to run; repeat for several [default: all].")
@click.option("--match", default="", help="Run only cases whose name contains this text.")
@click.option("--cc", default=None, help="Host C compiler [default: $CC, else cc].")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep every case's model and simulator build in this folder.")
def main(out, suites, match, cc, keep):
    """Run ONNX's operator tests through the float32 C and the reference; exit 1 if any case fails."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        cases = collect_cases(suites or SUITES, match)
    except BonsaiError as error:
        raise click.ClickException(str(error)) from error
    holder = None
    if keep:
        workdir = Path(keep)
    else:
        holder = tempfile.TemporaryDirectory(prefix="bonsai-conformance-")
        workdir = Path(holder.name)

    def progress(result: Result) -> None:
        if result.status != "skipped":
            click.echo(f"{result.status:7} {result.suite}/{result.name} {result.reason}", err=True)

    try:
        results = run_cases(cases, workdir, cc, progress)
    finally:
        if holder is not None:
            holder.cleanup()

    counts = Counter(result.status for result in results)
    click.echo(f"{len(results)} cases: {counts['passed']} passed, {counts['skipped']} skipped, "
               f"{counts['failed']} failed")
    if out:
        options = "".join(f" --suite {s}" for s in suites) + (f" --match {match}" if match else "")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(markdown(results, f"python -m bonsai_mcu.conformance --out {out}{options}"))
        click.echo(f"wrote {out}")
    sys.exit(1 if counts["failed"] else 0)


if __name__ == "__main__":
    main()
