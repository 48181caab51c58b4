"""Cross-compile model sources into test firmware, run it under QEMU, and read back the outputs
and the instruction count of every call.

The firmware is rendered from templates/harness/: a startup file for the core family
([qemu] harness = "cortex-m" or "riscv"), a linker script for the board's memory map, and a
main.c that embeds the input samples, calls NAME_run once per sample and prints every output as
hex through semihosting. QEMU runs with -icount shift=0, where each guest instruction advances
virtual time by 1 ns, so a timer clocked at F Hz ticks every 1e9 / F instructions.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import jinja2
import numpy as np

from . import BonsaiError, __version__
from .targets import Target, load_target

logger = logging.getLogger(__name__)

HARNESS_START = "bonsai-harness start"
HARNESS_END = "bonsai-harness end"
HARNESS_FAULT = "bonsai-harness fault"

# Virtual time per guest instruction is 2**ICOUNT_SHIFT ns.
ICOUNT_SHIFT = 0

# Generated model code is C99; -ffunction-sections and -fdata-sections let the linker drop
# unused kernels and let size.py see each function and array in its own section.
MODEL_CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections"]
# The harness uses inline assembly and GNU attributes.
HARNESS_CFLAGS = ["-std=gnu99", "-Wall", "-ffunction-sections", "-fdata-sections"]

HARNESS_STARTUP = {"cortex-m": "startup_cortex_m.c.j2", "riscv": "startup_riscv.c.j2"}
HARNESS_LINKER_SCRIPT = {"cortex-m": "cortex_m.ld.j2", "riscv": "riscv.ld.j2"}

COMPILE_TIMEOUT_S = 600
# After the end marker, QEMU gets this long to exit by itself before it is stopped (a picolibc
# or semihosting exit on RISC-V virt does not always end QEMU).
EXIT_GRACE_S = 1.0
POLL_INTERVAL_S = 0.02


@dataclass
class EmulationResult:
    """Outputs and instruction counts of one firmware run, one entry per input sample.

    outputs[s][k] is output k of sample s as a flat int8 array. instructions[s] is the number of
    instructions that the call NAME_run retired on sample s, measuring overhead removed. With a
    SysTick counter it is accurate to one tick (instructions_per_count instructions). With
    minstret it is exact. counts[s] and overhead are the raw counter readings behind it.
    """

    outputs: list[list[np.ndarray]]
    instructions: list[int]
    counts: list[int] = field(default_factory=list)
    overhead: int = 0
    instructions_per_count: float = 1.0
    log: str = ""


# ===== Tools =====


def require_tool(tool: str, apt_packages: Sequence[str], purpose: str) -> str:
    """Return the full path of `tool`, or raise BonsaiError naming it and its apt packages."""
    path = shutil.which(tool)
    if path is None:
        packages = " ".join(apt_packages) or tool
        raise BonsaiError(
            f"{tool} not found on PATH; it is needed to {purpose}. "
            f"Install it with: apt-get install {packages}"
        )
    return path


@functools.lru_cache(maxsize=None)
def _check_c_library(compiler: str, cflags: tuple[str, ...], target_name: str, packages: str) -> None:
    """Preprocess a file that includes the headers model code uses, once per compiler and flags."""
    probe = "#include <stddef.h>\n#include <stdint.h>\n#include <string.h>\n"
    command = [compiler, *cflags, "-E", "-x", "c", "-o", os.devnull, "-"]
    completed = subprocess.run(command, input=probe, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        first_line = (completed.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BonsaiError(
            f"{compiler} cannot find the C library headers (string.h, stdint.h) for target "
            f"{target_name}: {first_line}. Install them with: apt-get install {packages}"
        )


def require_toolchain(target: Target | str, emulator: bool = False) -> Target:
    """Check that the target's cross compiler and C library headers (and QEMU if `emulator`)
    are installed; raise BonsaiError with the apt-get command otherwise. Return the Target."""
    target = _as_target(target)
    compiler = require_tool(target.cc, target.apt_packages, f"compile for target {target.name}")
    _check_c_library(compiler, tuple(target.cflags), target.name, " ".join(target.apt_packages))

    if emulator:
        qemu = _qemu_table(target)
        require_tool(
            qemu["system"], qemu.get("apt_packages", []), f"emulate target {target.name}"
        )
    return target


def _as_target(target: Target | str) -> Target:
    return target if isinstance(target, Target) else load_target(target)


def _qemu_table(target: Target) -> dict:
    qemu = target.qemu
    if not qemu:
        raise BonsaiError(
            f"target {target.name} has no [qemu] table: no QEMU board emulates it, so its code "
            f"can only be compiled (bonsai_mcu.emulate.compile_only)"
        )
    missing = [key for key in ("system", "machine", "harness") if key not in qemu]
    if missing:
        raise BonsaiError(f"target {target.name}: [qemu] table lacks {', '.join(missing)}")
    if qemu["harness"] not in HARNESS_STARTUP:
        raise BonsaiError(
            f"target {target.name}: [qemu] harness = '{qemu['harness']}' is unknown; "
            f"use one of {', '.join(sorted(HARNESS_STARTUP))}"
        )
    return qemu


# ===== Compiling =====


def _run_compiler(command: list[str], step: str) -> None:
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BonsaiError(f"{step} timed out after {COMPILE_TIMEOUT_S} s: {' '.join(command)}") from error

    output = (completed.stdout + completed.stderr).strip()
    if completed.returncode != 0:
        hint = ""
        if "No such file or directory" in output and ".h" in output:
            hint = "\nIf a standard header is missing, install the target's C library."
        raise BonsaiError(f"{step} failed:\n$ {' '.join(command)}\n{output}{hint}")
    if output:
        logger.warning("%s: compiler warnings:\n%s", step, output)


def _object_name(index: int, source: Path) -> str:
    # The index keeps objects of same-named sources from different folders apart.
    return f"{index:03d}_{source.stem}.o"


def compile_only(
    target: Target | str,
    sources: Sequence[Path],
    include_dirs: Sequence[Path],
    workdir: Path,
    extra_cflags: Sequence[str] = (),
) -> list[Path]:
    """Compile each C source with the target's compiler and flags into workdir/obj/, no link.

    Flags: the target's [compiler] cflags, then MODEL_CFLAGS (-std=c99 -Wall -Wextra
    -ffunction-sections -fdata-sections), -I for each include dir, then extra_cflags. Serves the
    targets without a QEMU board (esp32, esp32s3) and feeds bonsai_mcu.size.measure_size.
    Returns the object files in the order of `sources`. Raises BonsaiError when the compiler or
    the C library is missing (naming the apt packages) or when a source fails to compile (with
    the compiler's output).
    """
    target = require_toolchain(target)
    object_dir = Path(workdir) / "obj"
    object_dir.mkdir(parents=True, exist_ok=True)
    include_flags = [f"-I{Path(folder)}" for folder in include_dirs]

    objects = []
    for index, source in enumerate(sources):
        source = Path(source)
        if not source.is_file():
            raise BonsaiError(f"source file {source} not found")
        output = object_dir / _object_name(index, source)
        command = [
            target.cc, *target.cflags, *MODEL_CFLAGS, *include_flags, *extra_cflags,
            "-c", str(source), "-o", str(output),
        ]
        _run_compiler(command, f"compiling {source} for target {target.name}")
        objects.append(output)
    return objects


# ===== Firmware =====


def _templates_dir() -> Path:
    """Return the harness templates folder: bonsai_mcu/templates/harness when installed,
    templates/harness in a source tree."""
    installed = Path(__file__).resolve().parent / "templates" / "harness"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "templates" / "harness"


def _render(template_name: str, context: dict) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return environment.get_template(template_name).render(**context)


def _c_initializer(values: np.ndarray) -> str:
    """Format int8 values as the body of a C array initializer, 16 values per line."""
    rows = []
    for start in range(0, values.size, 16):
        rows.append("    " + ", ".join(str(int(v)) for v in values[start : start + 16]) + ",")
    return "\n".join(rows)


def _check_inputs(inputs: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """Return the samples as flat int8 arrays; raise BonsaiError on mismatched samples."""
    if len(inputs) == 0:
        raise BonsaiError("no input samples given: pass at least one sample")

    samples = []
    for sample_index, sample in enumerate(inputs):
        tensors = []
        for input_index, tensor in enumerate(sample):
            array = np.asarray(tensor)
            if array.dtype != np.int8:
                raise BonsaiError(
                    f"input {input_index} of sample {sample_index} has dtype {array.dtype}; "
                    f"the firmware takes int8 tensors: quantize the sample first"
                )
            if array.size == 0:
                raise BonsaiError(f"input {input_index} of sample {sample_index} is empty")
            tensors.append(array.reshape(-1))
        samples.append(tensors)

    first_sizes = [tensor.size for tensor in samples[0]]
    if not first_sizes:
        raise BonsaiError("sample 0 has no input tensors: pass one array per model input")
    for sample_index, tensors in enumerate(samples):
        sizes = [tensor.size for tensor in tensors]
        if sizes != first_sizes:
            raise BonsaiError(
                f"sample {sample_index} has input sizes {sizes}, sample 0 has {first_sizes}: "
                f"every sample needs the same inputs"
            )
    return samples


def _check_output_sizes(output_sizes: Sequence[int]) -> list[int]:
    sizes = [int(size) for size in output_sizes]
    if not sizes or any(size <= 0 for size in sizes):
        raise BonsaiError(f"output sizes {sizes} are invalid: give one positive byte count per model output")
    return sizes


def _int_setting(qemu: dict, key: str, target: Target) -> int:
    if key not in qemu:
        raise BonsaiError(f"target {target.name}: [qemu] table lacks {key}")
    return int(qemu[key])


def build_firmware(
    target: Target | str,
    sources: Sequence[Path],
    include_dirs: Sequence[Path],
    prefix: str,
    inputs: Sequence[Sequence[np.ndarray]],
    output_sizes: Sequence[int],
    workdir: Path,
    extra_cflags: Sequence[str] = (),
) -> Path:
    """Build QEMU test firmware that runs `{prefix}_run` on every input sample; return the ELF.

    sources: the model's C files (NAME.c, NAME_weights.c, kernel files), compiled as in
    compile_only. include_dirs: folders holding NAME.h and private headers.
    inputs[s][k]: input k of sample s, an int8 array of any shape (passed flattened, in C
    order). output_sizes[k]: byte count of output k. The firmware calls
    `{prefix}_run(input_0, ..., output_0, ...)` for each sample, so the inputs and outputs must
    be listed in the order of the function's parameters.

    Writes workdir/harness/ (rendered main.c, startup.c, harness.h, link.ld), workdir/obj/,
    workdir/firmware.elf and workdir/firmware.map. Raises BonsaiError when the target has no
    [qemu] table, a tool is missing, the samples are inconsistent, or compiling or linking fails.
    The message then carries the compiler's output. A program too large for the board's flash or
    RAM fails at the link.
    """
    target = require_toolchain(target)
    qemu = _qemu_table(target)
    samples = _check_inputs(inputs)
    sizes = _check_output_sizes(output_sizes)
    workdir = Path(workdir)
    harness_dir = workdir / "harness"
    harness_dir.mkdir(parents=True, exist_ok=True)

    context = {
        "version": __version__,
        "target": target.name,
        "machine": qemu["machine"],
        "prefix": prefix,
        "start_marker": HARNESS_START,
        "end_marker": HARNESS_END,
        "fault_marker": HARNESS_FAULT,
        "startup_name": "startup.c",
        "samples": [[_c_initializer(tensor) for tensor in sample] for sample in samples],
        "input_sizes": [tensor.size for tensor in samples[0]],
        "output_sizes": sizes,
        "flash_origin": _int_setting(qemu, "flash_origin", target),
        "flash_size": _int_setting(qemu, "flash_size", target),
        "ram_origin": _int_setting(qemu, "ram_origin", target),
        "ram_size": _int_setting(qemu, "ram_size", target),
        "stack_size": _int_setting(qemu, "stack_size", target),
        "weights_section": target.weights_section,
        "arena_section": target.arena_section,
    }
    harness = qemu["harness"]
    rendered = {
        "harness.h": "harness.h.j2",
        "main.c": "main.c.j2",
        "startup.c": HARNESS_STARTUP[harness],
        "link.ld": HARNESS_LINKER_SCRIPT[harness],
    }
    for file_name, template_name in rendered.items():
        (harness_dir / file_name).write_text(_render(template_name, context))

    model_objects = compile_only(target, sources, include_dirs, workdir, extra_cflags)

    include_flags = [f"-I{harness_dir}", *(f"-I{Path(folder)}" for folder in include_dirs)]
    harness_objects = []
    for file_name in ("startup.c", "main.c"):
        source = harness_dir / file_name
        output = workdir / "obj" / f"harness_{source.stem}.o"
        command = [
            target.cc, *target.cflags, *HARNESS_CFLAGS, *include_flags,
            "-c", str(source), "-o", str(output),
        ]
        _run_compiler(command, f"compiling test harness {source} for target {target.name}")
        harness_objects.append(output)

    elf = workdir / "firmware.elf"
    command = [
        target.cc, *target.cflags, *qemu.get("link_flags", []),
        "-nostartfiles", "-T", str(harness_dir / "link.ld"),
        "-Wl,--gc-sections", f"-Wl,-Map={workdir / 'firmware.map'}",
        *(str(path) for path in harness_objects + model_objects),
        "-o", str(elf),
    ]
    _run_compiler(command, f"linking test firmware {elf} for target {target.name}")
    return elf


# ===== Running =====


def instructions_per_count(target: Target) -> float:
    """Return how many guest instructions one unit of the target's counter stands for.

    SysTick ticks at [qemu] counter_clock_hz; under -icount shift=S each instruction takes
    2**S ns of virtual time, so one tick is 1e9 / counter_clock_hz / 2**S instructions
    (40 for a 25 MHz clock). minstret counts instructions: 1.
    """
    qemu = _qemu_table(target)
    counter = qemu.get("counter", "")
    if counter == "minstret":
        return 1.0
    if counter == "systick":
        clock_hz = qemu.get("counter_clock_hz")
        if not clock_hz:
            raise BonsaiError(
                f"target {target.name}: [qemu] counter = 'systick' needs counter_clock_hz, the "
                f"SysTick clock of machine {qemu['machine']} in Hz"
            )
        return 1e9 / float(clock_hz) / float(2**ICOUNT_SHIFT)
    raise BonsaiError(
        f"target {target.name}: [qemu] counter = '{counter}' is unknown; use 'systick' or 'minstret'"
    )


def qemu_command(target: Target, elf: Path, semihosting_log: Path) -> list[str]:
    """Return the QEMU command line that runs `elf` and sends semihosting output to a file."""
    qemu = _qemu_table(target)
    # QEMU option values separate keys with commas; a literal comma is written twice.
    log_path = str(semihosting_log).replace(",", ",,")
    return [
        qemu["system"],
        "-M", qemu["machine"],
        *qemu.get("extra_args", []),
        "-display", "none",
        "-monitor", "none",
        "-serial", "none",
        "-icount", f"shift={ICOUNT_SHIFT}",
        "-chardev", f"file,id=semihosting,path={log_path}",
        "-semihosting-config", "enable=on,target=native,chardev=semihosting",
        "-kernel", str(elf),
    ]


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int = 8) -> str:
    last_lines = text.strip().splitlines()[-lines:]
    return "\n".join(line[:300] for line in last_lines) or "(none)"


def _function_at_fault(target: Target, elf: Path, fault: str) -> str:
    """Return ' in function NAME' for the pc=... field of a fault line, or '' if unknown."""
    addr2line = shutil.which(f"{target.triple}-addr2line") if target.triple else None
    pc = next((item[3:] for item in fault.split() if item.startswith("pc=")), None)
    if addr2line is None or pc is None:
        return ""
    completed = subprocess.run(
        [addr2line, "-f", "-e", str(elf), f"0x{pc}"], capture_output=True, text=True, check=False
    )
    function = (completed.stdout.splitlines() or ["??"])[0].strip()
    return "" if completed.returncode != 0 or function == "??" else f" in function {function}"


def _sample_lines_seen(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("sample "))


def run_firmware(
    target: Target | str,
    elf: Path,
    n_samples: int,
    output_sizes: Sequence[int],
    timeout_s: float = 60.0,
) -> EmulationResult:
    """Run firmware from build_firmware under QEMU and return its outputs and instruction counts.

    The run ends when the firmware prints its end marker (QEMU is stopped if it does not exit by
    itself within EXIT_GRACE_S), when QEMU exits, or after timeout_s seconds of wall time, when
    QEMU is killed. Semihosting output is kept next to the ELF in <elf>.semihosting.txt, QEMU's
    own output in <elf>.qemu.txt.

    Raises BonsaiError, naming the ELF and the QEMU machine, when:
    - QEMU is missing;
    - the firmware faults (the message gives the exception, pc and function);
    - it times out, or stops without printing the end marker;
    - it prints lines outside the harness format, or another sample count or output size than
      the ones given;
    - NAME_run returns non-zero.
    """
    target = _as_target(target)
    qemu = _qemu_table(target)
    system = require_tool(
        qemu["system"], qemu.get("apt_packages", []), f"emulate target {target.name}"
    )
    scale = instructions_per_count(target)
    sizes = _check_output_sizes(output_sizes)
    elf = Path(elf)
    if not elf.is_file():
        raise BonsaiError(f"firmware {elf} not found: build it with build_firmware first")

    semihosting_log = elf.with_suffix(".semihosting.txt")
    qemu_log = elf.with_suffix(".qemu.txt")
    semihosting_log.unlink(missing_ok=True)
    command = qemu_command(target, elf, semihosting_log)
    command[0] = system
    where = f"firmware {elf} on QEMU machine {qemu['machine']} (target {target.name})"

    # A firmware stuck printing must not fill the disk: a run may print this much at most.
    output_limit = 4096 + n_samples * (200 + 4 * sum(sizes))
    outcome = _supervise(command, qemu_log, semihosting_log, timeout_s, output_limit)
    text = _read_text(semihosting_log)
    qemu_output = _read_text(qemu_log)

    fault_lines = [line for line in text.splitlines() if line.startswith(HARNESS_FAULT)]
    if fault_lines:
        fault = fault_lines[0][len(HARNESS_FAULT):].strip()
        raise BonsaiError(
            f"{where} crashed: {fault}{_function_at_fault(target, elf, fault)}; "
            f"{_sample_lines_seen(text)} of {n_samples} samples finished before the fault"
        )
    if outcome == "timeout":
        raise BonsaiError(
            f"{where} timed out after {timeout_s:g} s with {_sample_lines_seen(text)} of "
            f"{n_samples} samples finished: the model may loop forever, or needs a longer time limit. "
            f"Last output:\n{_tail(text)}"
        )
    if outcome == "too much output":
        raise BonsaiError(
            f"{where} printed more than {output_limit} bytes, far more than {n_samples} samples "
            f"need; it was stopped. Last output:\n{_tail(text)}"
        )
    if HARNESS_END not in text:
        raise BonsaiError(
            f"{where} stopped without the end marker, with {_sample_lines_seen(text)} of "
            f"{n_samples} samples finished. Last output:\n{_tail(text)}\nQEMU output:\n{_tail(qemu_output)}"
        )

    result = parse_harness_output(text, n_samples, sizes, scale)
    if outcome not in ("exited 0", "stopped after end marker"):
        raise BonsaiError(f"{where} printed all samples but QEMU {outcome}. QEMU output:\n{_tail(qemu_output)}")
    return result


def _supervise(
    command: list[str], qemu_log: Path, semihosting_log: Path, timeout_s: float, output_limit: int
) -> str:
    """Run QEMU until it exits, the end marker arrives, output overflows or time runs out."""
    with open(qemu_log, "wb") as qemu_output:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=qemu_output, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout_s
            end_seen_at = None
            while True:
                return_code = process.poll()
                if return_code is not None:
                    return f"exited {return_code}"

                size = semihosting_log.stat().st_size if semihosting_log.exists() else 0
                if size > output_limit:
                    return "too much output"
                now = time.monotonic()
                if end_seen_at is None and HARNESS_END in _read_text(semihosting_log):
                    end_seen_at = now
                if end_seen_at is not None and now - end_seen_at > EXIT_GRACE_S:
                    return "stopped after end marker"
                # Once the end marker is in, only the grace period bounds the wait.
                if end_seen_at is None and now > deadline:
                    return "timeout"
                time.sleep(POLL_INTERVAL_S)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


class _HarnessLines:
    """Lines of firmware output from the start marker on, with line-numbered errors."""

    def __init__(self, lines: list[str], first_line: int):
        self.lines = lines
        self.first_line = first_line

    def line(self, index: int) -> str:
        return self.lines[index] if index < len(self.lines) else ""

    def error(self, index: int, reason: str) -> BonsaiError:
        excerpt = self.lines[index][:200] if index < len(self.lines) else "(end of output)"
        return BonsaiError(f"firmware output line {self.first_line + index + 1} {reason}: {excerpt!r}")

    def hex_number(self, index: int, digits: str, bits: int) -> int:
        if len(digits) != bits // 4:
            raise self.error(index, f"has a {len(digits)}-digit number where {bits // 4} hex digits belong")
        try:
            return int(digits, 16)
        except ValueError:
            raise self.error(index, "has a number that is not hexadecimal") from None


def _parse_sample_line(
    lines: _HarnessLines, index: int, sample: int, output_sizes: Sequence[int]
) -> tuple[int, list[np.ndarray]]:
    """Parse 'sample S return R count C output HEX ...'; return (count, outputs)."""
    fields = lines.line(index).split(" ")
    labels_valid = len(fields) == 6 + 2 * len(output_sizes) and fields[0:5:2] == ["sample", "return", "count"]
    if not labels_valid:
        raise lines.error(
            index, f"is not the line 'sample {sample} return R count C' with {len(output_sizes)} outputs"
        )
    if lines.hex_number(index, fields[1], 32) != sample:
        raise lines.error(index, f"should be the line of sample {sample}")

    status = lines.hex_number(index, fields[3], 32)
    if status != 0:
        signed = status - (1 << 32) if status >= 1 << 31 else status
        raise BonsaiError(
            f"the model's run function returned {signed} for sample {sample} (0 means success)"
        )
    count = lines.hex_number(index, fields[5], 64)

    tensors = []
    for output_index, size in enumerate(output_sizes):
        label, data = fields[6 + 2 * output_index], fields[7 + 2 * output_index]
        if label != "output":
            raise lines.error(index, f"lacks output {output_index}")
        if len(data) != 2 * size:
            raise lines.error(index, f"has {len(data) // 2} bytes for output {output_index}, expected {size}")
        try:
            tensors.append(np.frombuffer(bytes.fromhex(data), dtype=np.int8).copy())
        except ValueError:
            raise lines.error(index, f"has output {output_index} that is not hexadecimal") from None
    return count, tensors


def parse_harness_output(
    text: str, n_samples: int, output_sizes: Sequence[int], instructions_per_count: float = 1.0
) -> EmulationResult:
    """Parse the firmware's semihosting output (format in templates/harness/main.c.j2).

    Raises BonsaiError when a line is missing, out of order or malformed, when the sample count
    or an output length differs from the expected ones, or when NAME_run returned non-zero.
    """
    all_lines = [line.rstrip("\r") for line in text.splitlines()]
    start = next((i for i, line in enumerate(all_lines) if line.startswith(HARNESS_START)), None)
    if start is None:
        raise BonsaiError(f"firmware output has no start line '{HARNESS_START}'")
    lines = _HarnessLines(all_lines[start:], start)

    sample_count = lines.hex_number(0, lines.line(0)[len(HARNESS_START):].strip(), 32)
    if sample_count != n_samples:
        raise BonsaiError(f"the firmware embeds {sample_count} samples, {n_samples} were expected")

    overhead_fields = lines.line(1).split(" ")
    if len(overhead_fields) != 2 or overhead_fields[0] != "overhead":
        raise lines.error(1, "should be the line 'overhead N'")
    overhead = lines.hex_number(1, overhead_fields[1], 64)

    outputs, counts, instructions = [], [], []
    for sample in range(n_samples):
        count, tensors = _parse_sample_line(lines, 2 + sample, sample, output_sizes)
        outputs.append(tensors)
        counts.append(count)
        # A call shorter than one SysTick tick can read below the overhead; it counts as 0.
        instructions.append(max(0, round((count - overhead) * instructions_per_count)))

    end_index = 2 + n_samples
    if lines.line(end_index) != HARNESS_END:
        raise lines.error(end_index, f"should be the end marker '{HARNESS_END}'")

    return EmulationResult(
        outputs=outputs,
        instructions=instructions,
        counts=counts,
        overhead=overhead,
        instructions_per_count=instructions_per_count,
        log=text,
    )


def emulate(
    target: Target | str,
    sources: Sequence[Path],
    include_dirs: Sequence[Path],
    prefix: str,
    inputs: Sequence[Sequence[np.ndarray]],
    output_sizes: Sequence[int],
    workdir: Path,
    timeout_s: float = 60.0,
    extra_cflags: Sequence[str] = (),
) -> EmulationResult:
    """Build firmware for `prefix` (build_firmware) and run it (run_firmware) in one step.

    Returns outputs[s][k] as flat int8 arrays and instructions[s] per sample; raises
    BonsaiError as those two functions do.
    """
    target = require_toolchain(target, emulator=True)
    elf = build_firmware(target, sources, include_dirs, prefix, inputs, output_sizes, workdir, extra_cflags)
    return run_firmware(target, elf, len(inputs), output_sizes, timeout_s)
