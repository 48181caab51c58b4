"""`bonsai-mcu report`: the HTML page, its arena timeline, board budgets and the text summary.

The keyword-spotting model comes from ../shared/models (relative to the repository root); its
tests skip when that folder is absent. The screenshot test needs Chromium
(scripts/install-toolchains.sh installs it): it is skipped with the install command when
Chromium is missing, unless the environment variable CI is set: then it fails. The --measure
tests need arm-none-eabi-gcc and qemu-system-arm and follow the same rule.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bonsai_mcu import BonsaiError
from bonsai_mcu.bench import OPTIMIZATION
from bonsai_mcu.cli import main
from bonsai_mcu.ir import node_macs
from bonsai_mcu.onboard import run_on_qemu
from bonsai_mcu.pipeline import Progress, compile_model
from bonsai_mcu.report import (Board, arena_timeline, budget_rows, build_report, find_board, kernel_calls,
                               measure_footprint, measurement_sample, render_html, text_summary, write_report)
from bonsai_mcu.targets import load_target

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits"
MODELS = REPO.parent / "shared" / "models"
KWS = MODELS / "kws_ref_model.onnx"
KWS_SAMPLE = MODELS / "kws_sample.npy"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def require_kws() -> None:
    if not KWS.is_file():
        pytest.skip(f"{KWS} not found: the shared reference models sit in ../shared/models beside the repository")


def digits(target: str = "host"):
    return compile_model(DIGITS / "digits.onnx", load_target(target), "digits", None,
                         DIGITS / "digits_calibration.npy")


def invoke(*arguments: str):
    return CliRunner().invoke(main, list(arguments))


@pytest.fixture(scope="module")
def kws_report(tmp_path_factory):
    """Run the report command on the keyword-spotting model; return (HTML path, printed text)."""
    require_kws()
    path = tmp_path_factory.mktemp("report") / "kws.html"
    result = invoke("report", str(KWS), "--name", "kws", "--board", "nucleo-f446re", "--inputs", str(KWS_SAMPLE),
                    "-o", str(path))
    assert result.exit_code == 0, result.output
    return path, result.output


# -- the page -----------------------------------------------------------------


def section(html: str, name: str) -> str:
    start = html.index(f'<section id="{name}">')
    return html[start:html.index("</section>", start)]


def test_kws_report_layer_table(kws_report):
    html = kws_report[0].read_text()
    layers = section(html, "layers")
    rows = re.findall(r"<tr>\s*<td class=\"num\">(\d+)</td>\s*<td>(\w+)</td>", layers)
    assert [int(index) for index, _ in rows] == list(range(14))
    assert [op for _, op in rows].count("Conv") == 9
    assert "<code>kws_conv2d_sad</code>" in layers
    assert "<code>kws_depthwise_sad</code>" in layers
    assert "<code>kws_softmax</code>" in layers
    assert "2,656,768" in layers  # MACs per inference, the total row


def test_kws_report_arena_timeline(kws_report):
    html = kws_report[0].read_text()
    arena = section(html, "arena")
    assert arena.count("<svg") == 1
    plan = compile_model(MODELS / "kws_ref_model.onnx", load_target("cortex-m4"), "kws",
                         calibration=MODELS / "kws_sample.npy").plan
    assert f"lower bound {plan.lower_bound:,} B" in arena
    assert f"arena {plan.arena_size:,} B" in arena
    # One rect per buffer plus the plot background.
    assert len(re.findall(r"<rect [^>]*><title>", arena)) >= 10
    assert "<polyline" in arena


def test_kws_report_budget_and_agreement(kws_report):
    path, output = kws_report
    html = path.read_text()
    assert "budget of nucleo-f446re" in section(html, "memory")
    assert re.search(r"flash budget of nucleo-f446re: [\d,]+ of 524,288 B \(\d+\.\d%\), fits", output)
    assert re.search(r"RAM budget of nucleo-f446re: [\d,]+ of 131,072 B \(\d+\.\d%\), fits", output)
    agreement = section(html, "agreement")
    assert "Identity" in agreement
    assert "on 1 sample from" in agreement
    assert f"wrote {path}" in output


def test_kws_report_is_self_contained(kws_report):
    html = kws_report[0].read_text()
    assert "<script" not in html
    assert not re.search(r"\b(src|href)=", html)
    assert "url(" not in html
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# Appended to a copy of the page: writes the laid-out boxes of the layer table and the
# timeline into the DOM, which --dump-dom then prints. The report itself has no script.
LAYOUT_PROBE = """<script>
for (const [name, selector] of [["table", "#layers table"], ["svg", "#arena svg"]]) {
  const box = document.querySelector(selector).getBoundingClientRect();
  const line = document.createElement("pre");
  line.id = "probe-" + name;
  line.textContent = [box.left, box.top, box.width, box.height].map(Math.round).join(" ");
  document.body.appendChild(line);
}
</script>"""


def test_kws_report_screenshot_in_chromium(kws_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        reason = "chromium not found; install it with: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and scripts/install-toolchains.sh installs it, so this fails: {reason}")
        pytest.skip(reason)
    width, height = 1280, 2400

    def browse(page: Path, *arguments: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   "--hide-scrollbars", *arguments, page.as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    screenshot = tmp_path / "kws_report.png"
    browse(kws_report[0], f"--screenshot={screenshot}")
    assert png_size(screenshot) == (width, height)
    # A blank page of this size compresses to a few kilobytes.
    assert screenshot.stat().st_size > 50_000

    probe = tmp_path / "probe.html"
    probe.write_text(kws_report[0].read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = browse(probe, "--dump-dom").stdout
    boxes = {}
    for name in ("table", "svg"):
        match = re.search(rf'<pre id="probe-{name}">(-?\d+) (-?\d+) (\d+) (\d+)</pre>', dom)
        assert match, f"no layout of the {name} in the dumped DOM"
        boxes[name] = [int(value) for value in match.groups()]
    for name, (left, top, box_width, box_height) in boxes.items():
        outside = f"the {name} lies outside the screenshot: {boxes[name]}"
        assert left >= 0, outside
        assert left + box_width <= width, outside
        assert top >= 0, outside
        assert top + box_height <= height, outside
    assert boxes["svg"][2:] == [960, 380]
    assert boxes["table"][3] > 14 * 20  # fourteen layer rows


# -- parts --------------------------------------------------------------------


def test_arena_timeline_geometry():
    compiled = digits()
    timeline = arena_timeline(compiled)
    assert timeline.steps == len(compiled.graph.nodes) + 1
    assert max(timeline.live) == compiled.plan.lower_bound == timeline.lower_bound
    assert len(timeline.rects) == len(compiled.plan.buffers)
    plot = timeline.plot
    for rect in timeline.rects:
        assert rect["x"] >= plot["left"]
        assert rect["x"] + rect["width"] <= plot["right"] + 0.01
        assert rect["y"] >= plot["top"] - 0.01
        assert rect["y"] + rect["height"] <= plot["bottom"] + 0.01
    assert timeline.arena_y <= timeline.lower_bound_y


def test_kernel_calls_follow_model_c():
    compiled = digits()
    assert kernel_calls(compiled) == {0: "digits_dense", 1: "digits_dense", 2: "digits_dense"}


def test_find_board_reads_targets():
    board = find_board("nucleo-f446re")
    assert (board.target, board.flash_bytes, board.ram_bytes) == ("cortex-m4", 524288, 131072)
    assert find_board("esp32dev").target == "esp32"
    with pytest.raises(BonsaiError, match=r"--board nope: unknown board; boards in targets/\*\.toml: .*nucleo-f446re"):
        find_board("nope")


def test_budget_rows_flag_overflow():
    footprint = measure_footprint(digits())
    tiny = Board("tiny", "host", "", flash_bytes=1000, ram_bytes=64)
    rows = {row["memory"]: row for row in budget_rows(footprint, tiny)}
    assert rows["flash"]["over"] and rows["flash"]["bar"] == 100.0
    assert rows["RAM"]["used"] == footprint.ram["total"] == 128
    assert rows["RAM"]["over"]
    assert rows["RAM"]["percent"] == pytest.approx(200.0)


def test_footprint_estimate_without_compiler(monkeypatch):
    compiled = digits("cortex-m4")
    monkeypatch.setattr("bonsai_mcu.report.shutil.which", lambda tool: None)
    footprint = measure_footprint(compiled)
    assert not footprint.measured
    assert "arm-none-eabi-gcc not found; install it with: apt-get install gcc-arm-none-eabi" in footprint.note
    assert footprint.ram["arena"] == compiled.plan.arena_size
    assert footprint.flash["code"] == 0


def test_footprint_measured_for_cortex_m4():
    if shutil.which("arm-none-eabi-gcc") is None:
        reason = "arm-none-eabi-gcc not found; install it with: apt-get install gcc-arm-none-eabi"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so a missing tool fails: {reason}")
        pytest.skip(reason)
    compiled = digits("cortex-m4")
    footprint = measure_footprint(compiled)
    assert footprint.measured
    assert footprint.ram["arena"] == compiled.plan.arena_size
    assert footprint.flash["code"] > 0
    assert footprint.flash["weights"] >= 1294  # the packed trits alone


def test_report_board_sets_target(tmp_path):
    result = invoke("report", str(DIGITS / "digits.onnx"), "--board", "esp32dev", "--calibration",
                    str(DIGITS / "digits_calibration.npy"), "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    assert "(target esp32)" in result.output
    assert "budget of esp32dev" in result.output

    result = invoke("report", str(DIGITS / "digits.onnx"), "--board", "esp32dev", "--target", "cortex-m4",
                    "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 1
    assert "--board esp32dev: its core is esp32, not cortex-m4; pass --target esp32" in result.output


def test_report_digits_agreement(tmp_path):
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.load(DIGITS / "digits_test.npy")[:40])
    page = tmp_path / "out" / "digits.html"
    result = invoke("report", str(DIGITS / "digits.onnx"), "--name", "digits", "--calibration",
                    str(DIGITS / "digits_calibration.npy"), "--inputs", str(inputs), "-o", str(page))
    assert result.exit_code == 0, result.output
    match = re.search(r"output 'logits', 40 samples: cosine ([\d.]+), .* top-1 agreement ([\d.]+)%", result.output)
    assert match, result.output
    assert float(match.group(2)) >= 90.0
    assert "estimated" in result.output  # the host target has no weights section to measure
    assert "top-1 agreement" in section(page.read_text(), "agreement")


def test_report_without_inputs_explains_agreement():
    report = build_report(digits(), DIGITS / "digits.onnx")
    assert "Not computed: pass --inputs FILE" in section(render_html(report), "agreement")
    assert not any("reference vs float" in line for line in text_summary(report))


def test_report_rejects_folder_output(tmp_path):
    result = invoke("report", str(DIGITS / "digits.onnx"), "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "is a directory" in result.output
    with pytest.raises(BonsaiError, match="is a folder; name the HTML file"):
        write_report(build_report(digits(), DIGITS / "digits.onnx"), tmp_path)


# -- instructions per layer ----------------------------------------------------


def require_arm_emulation() -> None:
    for tool, package in (("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
                          ("qemu-system-arm", "qemu-system-arm")):
        if shutil.which(tool) is None:
            reason = f"{tool} not found; install it with: apt-get install {package}"
            if os.environ.get("CI"):
                pytest.fail(f"CI is set, so a missing tool fails: {reason}")
            pytest.skip(reason)


def layer_cells(html: str) -> list[list[str]]:
    """Return the cells of each layer row of the layer table, without the total row."""
    rows = re.findall(r"<tr>\s*(<td class=\"num\">\d+</td>.*?)</tr>", section(html, "layers"), re.DOTALL)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL) for row in rows]


def test_report_measure_digits_cortex_m4(tmp_path):
    require_arm_emulation()
    page = tmp_path / "digits.html"
    result = invoke("report", str(DIGITS / "digits.onnx"), "--name", "digits", "--target", "cortex-m4",
                    "--calibration", str(DIGITS / "digits_calibration.npy"), "--measure", "-o", str(page))
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert '<th class="num">instructions</th><th class="num">per MAC</th>' in html

    compiled = digits("cortex-m4")
    cells = layer_cells(html)
    assert len(cells) == len(compiled.graph.nodes)
    total, layers_with_macs = 0, 0
    for node, row in zip(compiled.graph.nodes, cells):
        instructions, per_mac = row[-2], row[-1]
        assert re.fullmatch(r"[\d,]+", instructions), f"layer {node.name}: {instructions!r}"
        count = int(instructions.replace(",", ""))
        total += count
        if node_macs(node, compiled.graph) == 0:
            continue
        layers_with_macs += 1
        assert count > 0, f"layer {node.name} has MACs but counted no instructions"
        assert float(per_mac) > 0
    assert layers_with_macs == 3
    assert f"instructions per inference: {total:,} measured on QEMU machine mps2-an386" in result.output

    # run_layers builds with OPTIMIZATION after the target's flags: count the whole inference with
    # the same flags, so the comparison checks the hook accounting and not the optimizer.
    sample, _ = measurement_sample(compiled, None)
    flags = [*compiled.target.cflags, OPTIMIZATION]
    same_build = dataclasses.replace(compiled, target=dataclasses.replace(compiled.target, cflags=flags))
    whole = run_on_qemu(same_build, sample).instructions[0]
    assert abs(total - whole) <= 0.1 * whole, f"sum of layers {total:,}, whole inference {whole:,}"


def test_report_measure_uses_first_input(tmp_path):
    require_arm_emulation()
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.load(DIGITS / "digits_test.npy")[:2])
    report = build_report(digits("cortex-m4"), DIGITS / "digits.onnx", inputs=inputs, measure=True)
    assert report.instructions_measured
    assert f"the first sample of {inputs}" in report.instructions_note
    assert all(row["instructions"] > 0 for row in report.layers)
    assert any(line.startswith("instructions per inference: ") for line in text_summary(report))


def test_report_unmeasured_instruction_column():
    report = build_report(digits("cortex-m4"), DIGITS / "digits.onnx")
    html = render_html(report)
    cells = layer_cells(html)
    assert len(cells) == 3
    assert all(row[-1] == "not measured" for row in cells)
    assert "Instructions: not measured; pass --measure" in section(html, "layers")
    assert not any(line.startswith("instructions") for line in text_summary(report))


def test_report_measure_rejects_target_without_qemu(tmp_path):
    result = invoke("report", str(DIGITS / "digits.onnx"), "--target", "esp32", "--measure",
                    "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 1
    message = re.search(r"--measure: .*", result.output)
    assert message, result.output
    assert "target esp32 has no QEMU board" in message.group(0)
    assert "cortex-m4" in message.group(0)
    assert "esp32c3" in message.group(0)
    assert not (tmp_path / "r.html").exists()


def test_report_measure_missing_toolchain(monkeypatch):
    monkeypatch.setattr("bonsai_mcu.emulate.shutil.which", lambda tool: None)
    with pytest.raises(BonsaiError, match="arm-none-eabi-gcc not found on PATH; .* apt-get install gcc-arm-none-eabi"):
        build_report(digits("cortex-m4"), DIGITS / "digits.onnx", measure=True)


# -- progress bars ------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(logging.getLogger("bonsai_mcu"), "level", logging.WARNING)
    assert list(Progress(range(5), "calibrating")) == [0, 1, 2, 3, 4]
    assert "calibrating" in terminal.getvalue()


def test_progress_bar_hidden_when_quiet_or_piped(monkeypatch):
    logger = logging.getLogger("bonsai_mcu")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(logger, "level", logging.ERROR)
    assert list(Progress(range(3), "calibrating")) == [0, 1, 2]
    assert terminal.getvalue() == ""

    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    monkeypatch.setattr(logger, "level", logging.WARNING)
    assert len(Progress(range(3), "calibrating")) == 3
    assert list(Progress(range(3), "calibrating")) == [0, 1, 2]
    assert piped.getvalue() == ""
