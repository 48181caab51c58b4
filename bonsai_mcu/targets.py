"""Target descriptions: one TOML file per core or board family in targets/."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import BonsaiError


def targets_dir() -> Path:
    """Return the folder of target TOML files, installed or in a source tree."""
    # The import name bonsai_mcu.targets is this module, so importlib.resources cannot reach
    # the installed data folder of the same name: look for it beside this file.
    installed = Path(__file__).resolve().parent / "targets"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "targets"


@dataclass
class Target:
    name: str
    description: str
    arch: str
    cc: str
    cflags: list[str]
    triple: str = ""
    # Debian packages that provide `cc` and its C library ([compiler] apt_packages).
    apt_packages: list[str] = field(default_factory=list)
    features: dict = field(default_factory=dict)
    alignment: int = 4
    weights_section: str = ""
    arena_section: str = ""
    kernel_variants: list[str] = field(default_factory=lambda: ["portable"])
    qemu: dict = field(default_factory=dict)
    board: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def is_host(self) -> bool:
        return self.arch == "host"


def available_targets() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """Load a target by name (targets/NAME.toml) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = targets_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        raise BonsaiError(
            f"unknown target '{name_or_path}': no file {path}; "
            f"available targets: {', '.join(available_targets())}"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise BonsaiError(f"{path}: invalid TOML: {error}") from error

    try:
        compiler = data["compiler"]
        memory = data.get("memory", {})
        return Target(
            name=data["name"],
            description=data.get("description", ""),
            arch=data["arch"],
            cc=compiler["cc"],
            cflags=list(compiler.get("cflags", [])),
            triple=compiler.get("triple", ""),
            apt_packages=list(compiler.get("apt_packages", [])),
            features=dict(data.get("features", {})),
            alignment=int(memory.get("alignment", 4)),
            weights_section=memory.get("weights_section", ""),
            arena_section=memory.get("arena_section", ""),
            kernel_variants=list(data.get("kernels", {}).get("variants", ["portable"])),
            qemu=dict(data.get("qemu", {})),
            board=dict(data.get("board", {})),
            raw=data,
        )
    except KeyError as error:
        raise BonsaiError(f"{path}: missing required key {error}") from error
