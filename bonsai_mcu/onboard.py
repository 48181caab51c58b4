"""Level 3 of verification and footprint: the generated C on the target's own instruction set.

`run_on_qemu` cross-compiles the generated sources into a test firmware, runs it
under QEMU (bonsai_mcu.emulate) and returns outputs and instructions per
inference. `measure_footprint` compiles the sources with the target's compiler
and splits flash and RAM into weights, code and arena (bonsai_mcu.size).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import BonsaiError
from .emulate import EmulationResult, compile_only, emulate
from .pipeline import Compiled
from .size import measure_size
from .targets import Target, available_targets, load_target

# A firmware run gets a fixed minute plus this many seconds per sample. The reference kernels
# retire about 150 M instructions per keyword-spotting inference on Cortex-M3 (measured under QEMU).
SECONDS_PER_SAMPLE = 20.0


def write_sources(compiled: Compiled, folder: Path) -> list[Path]:
    """Write the generated files into `folder`; return the C sources among them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in compiled.files.items():
        (folder / name).write_text(text)
    return [folder / name for name in sorted(compiled.files) if name.endswith(".c")]


def qemu_targets() -> list[str]:
    """Return the names of the bundled targets that have a QEMU board."""
    return [name for name in available_targets() if load_target(name).qemu]


def check_qemu_board(target: Target) -> None:
    if not target.qemu:
        raise BonsaiError(f"target {target.name} has no QEMU board; pick a target with one: "
                          f"--target {', '.join(qemu_targets())}")


def run_on_qemu(compiled: Compiled, inputs: list[list[np.ndarray]], workdir: Path | None = None) -> EmulationResult:
    """Run every sample (physical int8 arrays per input) through the model on the target's QEMU board."""
    target = compiled.target
    check_qemu_board(target)
    graph = compiled.graph
    output_sizes = [graph.tensors[name].size for name in graph.outputs]
    with tempfile.TemporaryDirectory(prefix="bonsai-qemu-") as scratch:
        folder = Path(workdir) if workdir else Path(scratch)
        sources = write_sources(compiled, folder / "src")
        timeout = 60.0 + SECONDS_PER_SAMPLE * len(inputs)
        return emulate(target, sources, [folder / "src"], compiled.name, inputs, output_sizes, folder / "qemu",
                       timeout_s=timeout)


def measure_footprint(compiled: Compiled, workdir: Path | None = None, extra_cflags: tuple[str, ...] = ()) -> dict:
    """Cross-compile the generated sources for the target and measure their sections.

    Returns measure_size's dictionary: flash {weights, code, rodata, data, total} and
    ram {data, arena, bss, total}, in bytes, plus per-object figures.
    """
    with tempfile.TemporaryDirectory(prefix="bonsai-size-") as scratch:
        folder = Path(workdir) if workdir else Path(scratch)
        sources = write_sources(compiled, folder / "src")
        objects = compile_only(compiled.target, sources, [folder / "src"], folder / "build", extra_cflags)
        return measure_size(compiled.target, objects)


def footprint_lines(footprint: dict) -> list[str]:
    flash, ram = footprint["flash"], footprint["ram"]
    return [
        f"flash: {flash['total']:,} B = weights {flash['weights']:,} + code {flash['code']:,} "
        f"+ other rodata {flash['rodata']:,} + data {flash['data']:,}",
        f"RAM: {ram['total']:,} B = arena {ram['arena']:,} + other bss {ram['bss']:,} + data {ram['data']:,}",
        "(objects before linking: memcpy, compiler helpers and the stack are not included)",
    ]
