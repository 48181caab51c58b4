"""Library manifests of `bonsai-mcu generate --package` and the examples that use them.

Each manifest is checked against the fields its ecosystem documents. Where the ecosystem's own
tool installs from PyPI, that tool checks it too: `pio pkg pack` (PlatformIO), `compote manifest
lint` (ESP-IDF component manager) and kconfiglib (Zephyr's Kconfig parser). These tools and
PyYAML, which reads the YAML manifests, go into a virtual environment kept in the pytest cache. The CMake example is
built and run on the host, and built for Cortex-M4 and run under QEMU. A test whose tool is missing is skipped with the install command
in the reason, unless the environment variable CI is set: then it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import venv
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from click.testing import CliRunner

from bonsai_mcu import BonsaiError
from bonsai_mcu.cli import main
from bonsai_mcu.package import ECOSYSTEMS, parse_ecosystems, platformio_name
from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.reference import run_quantized
from bonsai_mcu.targets import load_target

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits"
EXAMPLES = REPO / "examples"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]

TOOL_PACKAGES = ["platformio", "idf-component-manager", "kconfiglib", "pyyaml"]
PIP_COMMAND = "pip install " + " ".join(TOOL_PACKAGES)

# Documented top-level fields of each manifest: PlatformIO library.json reference, Arduino
# library specification rev. 2.2, ESP-IDF component manager manifest reference, and the
# zephyr/module.yml description of Zephyr's module documentation.
PLATFORMIO_FIELDS = {"name", "version", "description", "keywords", "homepage", "repository", "authors",
                     "license", "frameworks", "platforms", "headers", "examples", "dependencies", "export",
                     "scripts", "build", "$schema"}
PLATFORMIO_BUILD_FIELDS = {"flags", "unflags", "includeDir", "srcDir", "srcFilter", "extraScript", "libArchive",
                           "libLDFMode", "libCompatMode", "builder"}
ARDUINO_FIELDS = {"name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url",
                  "architectures", "depends", "dot_a_linkage", "includes", "precompiled", "ldflags"}
ARDUINO_REQUIRED = {"name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url",
                    "architectures"}
ARDUINO_CATEGORIES = {"Display", "Communication", "Signal Input/Output", "Sensors", "Device Control", "Timing",
                      "Data Storage", "Data Processing", "Other"}
IDF_FIELDS = {"version", "description", "url", "repository", "repository_info", "documentation", "issues",
              "discussion", "maintainers", "license", "tags", "files", "examples", "targets", "dependencies"}
ZEPHYR_FIELDS = {"name", "build", "tests", "samples", "boards", "blobs", "security"}
ZEPHYR_BUILD_FIELDS = {"cmake", "kconfig", "cmake-ext", "kconfig-ext", "sysbuild-cmake", "sysbuild-kconfig",
                       "sysbuild-cmake-ext", "sysbuild-kconfig-ext", "depends", "settings"}
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?")


def missing(reason: str):
    """Skip with `reason`, or fail when CI is set."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so a missing tool fails: {reason}")
    pytest.skip(reason)


def require_tool(tool: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool} not found; install it with: {install}")
    return path


def run(command, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def generate(out: Path, *options: str, name: str = "digits", target: str = "cortex-m4"):
    arguments = ["-q", "generate", str(DIGITS / "digits.onnx"), "-o", str(out), "--name", name,
                 "--calibration", str(DIGITS / "digits_calibration.npy"), "--target", target, *options]
    return CliRunner().invoke(main, arguments)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """The digits model generated for cortex-m4 with every manifest."""
    out = tmp_path_factory.mktemp("package") / "digits"
    result = generate(out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tools(request, tmp_path_factory) -> Path:
    """Return the bin folder of a virtual environment with the ecosystems' manifest tools."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("bonsai-package-tools") if cache is not None else tmp_path_factory.mktemp("tools")
    bin_dir = folder / "bin"
    ready = folder / "installed.txt"
    if ready.is_file() and ready.read_text().split() == TOOL_PACKAGES:
        return bin_dir
    try:
        venv.create(folder, with_pip=True, clear=True)
        result = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", *TOOL_PACKAGES],
                                capture_output=True, text=True, timeout=900)
        error = result.stderr.strip()[-300:] if result.returncode != 0 else ""
    except (OSError, subprocess.SubprocessError) as exception:
        error = str(exception)
    if error:
        missing(f"could not install the manifest tools ({error}); install them with: {PIP_COMMAND}")
    ready.write_text(" ".join(TOOL_PACKAGES))
    return bin_dir


def tool_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    # A fresh PlatformIO home, and no telemetry: `pio pkg pack` needs no network.
    env.update(PLATFORMIO_CORE_DIR=str(tmp_path / "platformio"), PLATFORMIO_SETTING_ENABLE_TELEMETRY="no")
    return env


def load_yaml(tools: Path, path: Path):
    """Parse YAML with the tools environment's PyYAML."""
    script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    return json.loads(run([tools / "python", "-c", script, path]).stdout)


def sources_of(library: Path) -> list[str]:
    return sorted(path.name for path in (library / "src").glob("*.c"))


# -- the --package option -----------------------------------------------------


def test_parse_ecosystems_values():
    assert parse_ecosystems("all") == list(ECOSYSTEMS)
    assert parse_ecosystems("none") == []
    assert parse_ecosystems("cmake, PlatformIO") == ["platformio", "cmake"]
    with pytest.raises(BonsaiError, match="unknown ecosystem keil"):
        parse_ecosystems("cmake,keil")
    with pytest.raises(BonsaiError, match="empty"):
        parse_ecosystems(" , ")


def test_platformio_name_is_slug():
    assert platformio_name("digits") == "digits"
    assert platformio_name("My__Model_") == "my-model"
    with pytest.raises(BonsaiError, match="--name '___'"):
        platformio_name("___")


def test_generate_writes_every_manifest(library):
    expected = {"library.json", "library.properties", "CMakeLists.txt", "idf_component.yml",
                "zephyr/module.yml", "zephyr/CMakeLists.txt", "zephyr/Kconfig"}
    for relative in expected:
        assert (library / relative).is_file(), relative
    listed = set((library / ".bonsai-mcu").read_text().split())
    assert expected <= listed
    assert {"src/digits.h", "src/digits.c", "src/digits_weights.c"} <= listed


def test_package_option_selects_manifests(tmp_path):
    out = tmp_path / "digits"
    assert generate(out, "--package", "cmake").exit_code == 0
    cmake_only = (out / "CMakeLists.txt").read_text()
    assert "add_library(bonsai_digits STATIC" in cmake_only
    assert "idf_component_register" not in cmake_only
    assert not (out / "library.json").exists()

    assert generate(out, "--package", "espidf").exit_code == 0
    espidf_only = (out / "CMakeLists.txt").read_text()
    assert "idf_component_register" in espidf_only
    assert "add_library" not in espidf_only
    assert (out / "idf_component.yml").is_file()

    assert generate(out, "--package", "none").exit_code == 0
    for stale in ("CMakeLists.txt", "idf_component.yml", "library.json"):
        assert not (out / stale).exists(), stale
    assert (out / "src" / "digits.h").is_file()


def test_package_option_rejects_bad_values(tmp_path):
    result = generate(tmp_path / "a", "--package", "keil")
    assert result.exit_code == 1
    assert "--package 'keil': unknown ecosystem keil" in result.output
    result = generate(tmp_path / "b", "--package-version", "1.0")
    assert result.exit_code == 1
    assert "--package-version '1.0': not a semantic version" in result.output
    result = generate(tmp_path / "c", "--package-url", "https://example.org/a b")
    assert result.exit_code == 1
    assert "a URL contains no spaces" in result.output


def test_arduino_rejects_reserved_names(tmp_path):
    result = generate(tmp_path / "a", "--package", "arduino", name="ArduinoNet")
    assert result.exit_code == 1
    assert "--name 'ArduinoNet'" in result.output
    # A leading underscore is reserved in C, so --name rejects it before any manifest is written.
    result = generate(tmp_path / "b", "--package", "arduino", name="_hidden")
    assert result.exit_code == 1
    assert "reserved in C" in result.output
    assert generate(tmp_path / "c", "--package", "arduino", name="hidden").exit_code == 0


# -- PlatformIO ---------------------------------------------------------------


def test_library_json_documented_fields(library):
    manifest = json.loads((library / "library.json").read_text())
    assert set(manifest) <= PLATFORMIO_FIELDS, set(manifest) - PLATFORMIO_FIELDS
    assert set(manifest["build"]) <= PLATFORMIO_BUILD_FIELDS
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", manifest["name"])
    assert len(manifest["name"]) <= 50
    assert SEMVER.fullmatch(manifest["version"])
    assert 0 < len(manifest["description"]) <= 255
    assert (library / manifest["build"]["srcDir"] / "digits.c").is_file()
    assert (library / manifest["build"]["includeDir"] / manifest["headers"]).is_file()
    assert "homepage" not in manifest


def test_library_json_homepage_from_package_url(tmp_path):
    out = tmp_path / "digits"
    assert generate(out, "--package", "platformio", "--package-url", "https://example.org/kws").exit_code == 0
    assert json.loads((out / "library.json").read_text())["homepage"] == "https://example.org/kws"


def test_pio_pkg_pack_accepts_library_json(library, tools, tmp_path):
    result = run([tools / "pio", "pkg", "pack", library, "-o", tmp_path], env=tool_env(tmp_path))
    archive = tmp_path / "digits-1.0.0.tar.gz"
    assert archive.is_file(), result.stdout
    with tarfile.open(archive) as packed:
        names = set(packed.getnames())
    assert {"library.json", "src/digits.h", "src/digits.c"} <= names


def test_pio_pkg_pack_rejects_bad_name(library, tools, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(library, broken)
    manifest = json.loads((broken / "library.json").read_text())
    manifest["name"] = "a:b"
    (broken / "library.json").write_text(json.dumps(manifest))
    result = subprocess.run([str(tools / "pio"), "pkg", "pack", str(broken), "-o", str(tmp_path)],
                            env=tool_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "name" in result.stdout + result.stderr


# -- Arduino ------------------------------------------------------------------


def read_properties(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, separator, value = line.partition("=")
            assert separator, f"{path}: line without '=': {line}"
            assert key not in fields, f"{path}: {key} given twice"
            fields[key] = value
    return fields


def test_library_properties_documented_fields(library):
    fields = read_properties(library / "library.properties")
    assert ARDUINO_REQUIRED <= set(fields) <= ARDUINO_FIELDS
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,62}", fields["name"])
    assert SEMVER.fullmatch(fields["version"])
    assert fields["category"] in ARDUINO_CATEGORIES
    assert not fields["maintainer"].startswith("Arduino")
    assert urlparse(fields["url"]).scheme in ("file", "http", "https")
    assert fields["architectures"] == "*"
    for value in fields.values():
        assert value.strip(), fields


def test_arduino_src_layout(library):
    # Library format 1.5: library.properties at the root, every source below src/.
    fields = read_properties(library / "library.properties")
    assert (library / "src" / fields["includes"]).is_file()
    assert not list(library.glob("*.c"))
    assert not list(library.glob("*.h"))
    assert sources_of(library) == ["digits.c", "digits_dense.c", "digits_weights.c"]


# -- ESP-IDF and CMake --------------------------------------------------------


def test_idf_component_yml_documented_fields(library, tools):
    manifest = load_yaml(tools, library / "idf_component.yml")
    assert set(manifest) <= IDF_FIELDS, set(manifest) - IDF_FIELDS
    assert SEMVER.fullmatch(manifest["version"])
    assert manifest["dependencies"] == {"idf": ">=4.1"}


def test_compote_lints_idf_component_yml(library, tools, tmp_path):
    run([tools / "compote", "manifest", "lint", library / "idf_component.yml"], env=tool_env(tmp_path))


def test_cmakelists_espidf_branch(library, tmp_path):
    cmake = require_tool("cmake", "apt-get install cmake")
    # ESP-IDF reads a component's CMakeLists.txt in script mode with idf_component_register
    # defined; the stand-in records its arguments. Reaching project() would fail in script mode.
    script = tmp_path / "espidf.cmake"
    record = tmp_path / "record.txt"
    script.write_text(f"""
function(idf_component_register)
  cmake_parse_arguments(ARG "" "" "SRCS;INCLUDE_DIRS" ${{ARGN}})
  file(APPEND "{record}" "SRCS=${{ARG_SRCS}}\\nINCLUDE_DIRS=${{ARG_INCLUDE_DIRS}}\\n")
endfunction()
set(ESP_PLATFORM 1)
include("{library / 'CMakeLists.txt'}")
""")
    run([cmake, "-P", script])
    lines = record.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0] == "SRCS=" + ";".join(f"src/{name}" for name in sources_of(library))
    assert lines[1] == "INCLUDE_DIRS=src"


def test_cmake_fetchcontent_consumer(library, tmp_path):
    cmake = require_tool("cmake", "apt-get install cmake")
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "main.c").write_text('#include "digits.h"\n'
                                    "int main(void) { return DIGITS_OUTPUT_0_SIZE == 10u ? 0 : 1; }\n")
    (project / "CMakeLists.txt").write_text(f"""cmake_minimum_required(VERSION 3.14)
project(consumer C)
include(FetchContent)
FetchContent_Declare(digits URL "{library}")
FetchContent_MakeAvailable(digits)
add_executable(consumer main.c)
target_link_libraries(consumer PRIVATE bonsai::digits)
""")
    run([cmake, "-S", project, "-B", project / "build"])
    run([cmake, "--build", project / "build"])
    run([project / "build" / "consumer"])


# -- Zephyr -------------------------------------------------------------------


def test_zephyr_module_yml_documented_fields(library, tools):
    module = load_yaml(tools, library / "zephyr" / "module.yml")
    assert set(module) <= ZEPHYR_FIELDS
    assert set(module["build"]) <= ZEPHYR_BUILD_FIELDS
    assert module["name"] == "digits"
    assert (library / module["build"]["cmake"] / "CMakeLists.txt").is_file()
    assert (library / module["build"]["kconfig"]).is_file()


def test_zephyr_kconfig_parses(library, tools, tmp_path):
    # Zephyr wraps a module's Kconfig in a menu of its own; kconfiglib is Zephyr's parser.
    top = tmp_path / "Kconfig"
    top.write_text(f'mainmenu "test"\nmenu "digits"\nosource "{library / "zephyr" / "Kconfig"}"\nendmenu\n')
    script = ("import kconfiglib, sys; k = kconfiglib.Kconfig(sys.argv[1], warn_to_stderr=False); "
              "s = k.syms['BONSAI_DIGITS']; print(kconfiglib.TYPE_TO_STR[s.type], s.str_value, len(k.warnings))")
    assert run([tools / "python", "-c", script, top]).stdout.split() == ["bool", "y", "0"]


def test_zephyr_cmakelists_sources(library, tmp_path):
    cmake = require_tool("cmake", "apt-get install cmake")
    record = tmp_path / "record.txt"
    script = tmp_path / "zephyr.cmake"
    script.write_text(f"""
function(zephyr_library_named name)
  file(APPEND "{record}" "LIBRARY=${{name}}\\n")
endfunction()
function(zephyr_library_sources)
  foreach(source ${{ARGN}})
    get_filename_component(source "${{source}}" REALPATH)
    file(APPEND "{record}" "SOURCE=${{source}}\\n")
  endforeach()
endfunction()
function(zephyr_include_directories folder)
  get_filename_component(folder "${{folder}}" REALPATH)
  file(APPEND "{record}" "INCLUDE=${{folder}}\\n")
endfunction()
set(CONFIG_BONSAI_DIGITS y)
include("{library / 'zephyr' / 'CMakeLists.txt'}")
""")
    run([cmake, "-P", script])
    lines = record.read_text().splitlines()
    source_dir = (library / "src").resolve()
    assert lines[0] == "LIBRARY=bonsai_digits"
    assert lines[1:-1] == [f"SOURCE={source_dir / name}" for name in sources_of(library)]
    assert lines[-1] == f"INCLUDE={source_dir}"

    # With the option off the module adds nothing.
    record.unlink()
    script.write_text(script.read_text().replace("set(CONFIG_BONSAI_DIGITS y)", ""))
    run([cmake, "-P", script])
    assert not record.exists()


# -- examples -----------------------------------------------------------------


def sample_scores() -> tuple[np.ndarray, int]:
    """Return the reference int8 scores of the examples' sample digit and its label.

    The input is quantized as the examples do it, with NAME_quantize of the generated header:
    in float32, value / scale rounded half away from zero, then plus the zero point.
    """
    compiled = compile_model(DIGITS / "digits.onnx", load_target("cortex-m4"), "digits", None,
                             DIGITS / "digits_calibration.npy")
    graph = compiled.graph
    qparams = graph.tensors[graph.inputs[0]].qparams
    pixels = np.load(DIGITS / "digits_test.npy")[0].astype(np.float32)
    scale = np.float32(float(f"{qparams.scale:.9g}"))
    scaled = pixels / scale
    rounded = np.where(scaled >= 0, np.floor(scaled + np.float32(0.5)), -np.floor(-scaled + np.float32(0.5)))
    quantized = np.clip(rounded + qparams.zero_point, -128, 127).astype(np.int8)
    scores = run_quantized(graph, [quantized])[graph.outputs[0]].reshape(-1)
    label = int(np.load(DIGITS / "digits_test_labels.npy")[0])
    return scores, label


def expected_output(scores: np.ndarray, label: int) -> str:
    return (f"scores: {' '.join(str(int(v)) for v in scores)}\n"
            f"predicted digit {int(np.argmax(scores))} (label {label})\n")


SAMPLE_HEADERS = [
    EXAMPLES / "cmake" / "sample_digit.h",
    EXAMPLES / "arduino" / "digits_demo" / "sample_digit.h",
    EXAMPLES / "platformio-cortex-m4" / "src" / "sample_digit.h",
    EXAMPLES / "platformio-esp32" / "src" / "sample_digit.h",
    EXAMPLES / "espidf" / "main" / "sample_digit.h",
]


def test_sample_digit_headers_match_dataset():
    pixels = np.load(DIGITS / "digits_test.npy")[0] * 16
    label = int(np.load(DIGITS / "digits_test_labels.npy")[0])
    for header in SAMPLE_HEADERS:
        text = header.read_text()
        body = text[text.index("{") + 1:text.index("}")]
        values = [int(value) for value in body.replace(",", " ").split()]
        assert values == [int(v) for v in pixels], header
        assert f"#define SAMPLE_DIGIT_LABEL {label}\n" in text, header


@pytest.fixture(scope="module")
def cmake_example(tmp_path_factory) -> Path:
    """The CMake example with the digits model generated beside it, in a scratch copy."""
    folder = tmp_path_factory.mktemp("cmake-example") / "cmake"
    shutil.copytree(EXAMPLES / "cmake", folder, ignore=shutil.ignore_patterns("digits", "build-*"))
    result = generate(folder / "digits", "--package", "cmake")
    assert result.exit_code == 0, result.output
    return folder


def test_cmake_example_runs_on_host(cmake_example):
    cmake = require_tool("cmake", "apt-get install cmake")
    build = cmake_example / "build-host"
    env = dict(os.environ, CFLAGS=" ".join(STRICT[1:]))
    run([cmake, "-S", cmake_example, "-B", build], env=env)
    run([cmake, "--build", build])
    output = run([build / "digits_demo"]).stdout
    scores, label = sample_scores()
    assert output == expected_output(scores, label)
    assert f"predicted digit {label} (label {label})" in output


def test_cmake_example_builds_for_cortex_m4(cmake_example):
    cmake = require_tool("cmake", "apt-get install cmake")
    require_tool("arm-none-eabi-gcc", "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi")
    build = cmake_example / "build-m4"
    env = dict(os.environ, CFLAGS=" ".join(STRICT[1:]))
    run([cmake, "-S", cmake_example, "-B", build, f"-DCMAKE_TOOLCHAIN_FILE={cmake_example / 'cortex-m4.cmake'}"],
        env=env)
    run([cmake, "--build", build])
    elf = build / "digits_demo.elf"
    header = elf.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 40  # EM_ARM

    qemu = require_tool("qemu-system-arm", "apt-get install qemu-system-arm")
    result = run([qemu, "-M", "mps2-an386", "-nographic", "-semihosting", "-kernel", elf], timeout=60)
    scores, label = sample_scores()
    assert result.stdout == expected_output(scores, label)


def compile_generated(library: Path, folder: Path) -> list[Path]:
    cc = require_tool("cc", "apt-get install gcc")
    objects = []
    for source in (library / "src").glob("*.c"):
        obj = folder / (source.stem + ".o")
        run([cc, *STRICT, "-c", source, "-o", obj])
        objects.append(obj)
    return objects


ARDUINO_STAND_IN = """// Host stand-in for the part of Arduino.h that the example sketches use.
#include <cstdio>
#include <cstdint>
struct SerialPort {
    void begin(unsigned long) {}
    explicit operator bool() const { return true; }
    void print(const char *text) { std::fputs(text, stdout); }
    void print(int value) { std::printf("%d", value); }
    void print(unsigned value) { std::printf("%u", value); }
    void println(const char *text = "") { std::printf("%s\\n", text); }
};
static SerialPort Serial;
"""


@pytest.mark.parametrize("sketch", [
    EXAMPLES / "arduino" / "digits_demo" / "digits_demo.ino",
    EXAMPLES / "platformio-cortex-m4" / "src" / "main.cpp",
    EXAMPLES / "platformio-esp32" / "src" / "main.cpp",
], ids=["arduino", "platformio-cortex-m4", "platformio-esp32"])
def test_arduino_sketch_runs_on_host(library, tmp_path, sketch):
    cxx = require_tool("c++", "apt-get install g++")
    (tmp_path / "Arduino.h").write_text(ARDUINO_STAND_IN)
    driver = tmp_path / "driver.cpp"
    driver.write_text("void setup();\nint main() { setup(); return 0; }\n")
    objects = compile_generated(library, tmp_path)
    program = tmp_path / "sketch"
    run([cxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-x", "c++", sketch, "-x", "none", driver,
         *objects, "-I", tmp_path, "-I", sketch.parent, "-I", library / "src", "-o", program])
    scores, label = sample_scores()
    assert run([program]).stdout == expected_output(scores, label)


def test_espidf_example_runs_on_host(library, tmp_path):
    cc = require_tool("cc", "apt-get install gcc")
    driver = tmp_path / "driver.c"
    driver.write_text("void app_main(void);\nint main(void) { app_main(); return 0; }\n")
    objects = compile_generated(library, tmp_path)
    program = tmp_path / "app"
    main_dir = EXAMPLES / "espidf" / "main"
    run([cc, *STRICT, main_dir / "main.c", driver, *objects, "-I", main_dir, "-I", library / "src", "-o", program])
    scores, label = sample_scores()
    assert run([program]).stdout == expected_output(scores, label)


def test_example_readmes_name_their_commands():
    for folder, commands in {
        "cmake": ["cmake -S . -B build-host", "--toolchain cortex-m4.cmake", "qemu-system-arm -M mps2-an386"],
        "platformio-cortex-m4": ["-o lib/digits", "pio run --target upload"],
        "platformio-esp32": ["-o lib/digits", "pio run --target upload"],
        "espidf": ["-o components/digits", "idf.py build flash monitor"],
        "arduino": ["--package arduino", "arduino-cli compile --fqbn arduino:mbed_nano:nano33ble --library digits"],
    }.items():
        readme = (EXAMPLES / folder / "README.md").read_text()
        assert "bonsai-mcu generate ../digits/digits.onnx" in readme, folder
        for command in commands:
            assert command in readme, (folder, command)
