"""Flash and RAM footprint of compiled model objects, split into weights, code, other read-only
data, initialized data, arena and other zero-initialized data.

Section sizes come from the ELF section headers of each object, read with the standard library.
The classification follows the Berkeley format of GNU size, so the totals equal what
`<triple>-size` prints for the same objects:
- read-only or executable sections are "text" (flash);
- writable sections with contents are "data" (flash for the initial values, and RAM);
- sections without contents (SHT_NOBITS) are "bss" (RAM).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import BonsaiError
from .targets import Target, load_target

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHT_NOBITS = 8

# e_machine values of the ELF specification, by the start of the target's compiler triple.
ELF_MACHINES = {"arm": (40, "Arm"), "riscv": (243, "RISC-V"), "xtensa": (94, "Xtensa")}


@dataclass
class Section:
    name: str
    type: int
    flags: int
    size: int


def read_sections(path: Path) -> tuple[int, list[Section]]:
    """Read the section headers of an ELF file (32 or 64 bit, either byte order).

    Returns (e_machine, sections). Raises BonsaiError when the file is missing or not ELF.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BonsaiError(f"object file {path} not found") from None
    if data[:4] != b"\x7fELF" or len(data) < 52:
        raise BonsaiError(f"{path} is not an ELF object file")

    is_64_bit = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(order + "H", data, 18)[0]
    if is_64_bit:
        section_offset = struct.unpack_from(order + "Q", data, 40)[0]
        entry_size, count, names_index = struct.unpack_from(order + "HHH", data, 58)
        header_format = order + "IIQQQQIIQQ"
    else:
        section_offset = struct.unpack_from(order + "I", data, 32)[0]
        entry_size, count, names_index = struct.unpack_from(order + "HHH", data, 46)
        header_format = order + "IIIIIIIIII"

    headers = []
    for index in range(count):
        fields = struct.unpack_from(header_format, data, section_offset + index * entry_size)
        name_offset, section_type, flags, _address, offset, size = fields[:6]
        headers.append((name_offset, section_type, flags, offset, size))

    names_offset = headers[names_index][3]
    sections = []
    for name_offset, section_type, flags, _offset, size in headers:
        start = names_offset + name_offset
        name = data[start : data.index(b"\0", start)].decode("ascii", errors="replace")
        sections.append(Section(name, section_type, flags, size))
    return machine, sections


def _in_section(name: str, section: str) -> bool:
    return bool(section) and (name == section or name.startswith(section + "."))


def _classify(section: Section, weights_section: str, arena_section: str) -> str | None:
    """Return the footprint category of an allocated section, None for one that takes no memory."""
    if not section.flags & SHF_ALLOC or section.size == 0:
        return None
    if section.type == SHT_NOBITS:
        return "arena" if _in_section(section.name, arena_section) else "bss"
    if section.flags & SHF_EXECINSTR:
        return "code"
    if section.flags & SHF_WRITE:
        return "data"
    return "weights" if _in_section(section.name, weights_section) else "rodata"


def _footprint(sizes: dict[str, int]) -> dict:
    flash = {key: sizes[key] for key in ("weights", "code", "rodata", "data")}
    flash["total"] = sum(flash.values())
    ram = {key: sizes[key] for key in ("data", "arena", "bss")}
    ram["total"] = sum(ram.values())
    return {"flash": flash, "ram": ram}


def measure_size(
    target: Target | str,
    object_files: Sequence[Path],
    weights_section: str | None = None,
    arena_section: str | None = None,
) -> dict:
    """Measure the flash and RAM that compiled objects take, in bytes.

    weights_section and arena_section default to the target's [memory] names. A section counts
    as weights (or arena) when its name equals that name or starts with it followed by '.'.
    Returns
        {"target": name,
         "flash": {"weights", "code", "rodata", "data", "total"},
         "ram": {"data", "arena", "bss", "total"},
         "objects": [{"path": str, "flash": {...}, "ram": {...}}, ...]}
    where flash.code + flash.rodata + flash.weights is the Berkeley "text" of `<triple>-size`,
    data its "data" (counted in flash for the initial values and in RAM), and ram.arena +
    ram.bss its "bss". The objects are not linked, so library code (memcpy, libgcc helpers), the
    stack and linker padding are not included. Raises BonsaiError when a file is not an ELF
    object or was built for another architecture than the target's, or when no weights section
    is named.
    """
    target = target if isinstance(target, Target) else load_target(target)
    weights_section = target.weights_section if weights_section is None else weights_section
    arena_section = target.arena_section if arena_section is None else arena_section
    if not weights_section:
        raise BonsaiError(
            f"target {target.name} names no weights section ([memory] weights_section), so "
            f"weights cannot be told apart from other read-only data: pass weights_section"
        )
    expected_machine = next(
        (machine for prefix, machine in ELF_MACHINES.items() if target.triple.startswith(prefix)),
        None,
    )

    totals = dict.fromkeys(("weights", "code", "rodata", "data", "arena", "bss"), 0)
    objects = []
    for path in object_files:
        machine, sections = read_sections(path)
        if expected_machine is not None and machine != expected_machine[0]:
            raise BonsaiError(
                f"{path} is built for ELF machine {machine}, not for target {target.name} "
                f"({expected_machine[1]}): compile it with the target's compiler {target.cc}"
            )

        sizes = dict.fromkeys(totals, 0)
        for section in sections:
            category = _classify(section, weights_section, arena_section)
            if category is not None:
                sizes[category] += section.size
        for key, value in sizes.items():
            totals[key] += value
        objects.append({"path": str(path), **_footprint(sizes)})

    return {"target": target.name, **_footprint(totals), "objects": objects}
