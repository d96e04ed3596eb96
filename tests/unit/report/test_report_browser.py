"""The HTML report opens in headless Chromium without console errors and draws its charts."""

from __future__ import annotations

import re
from pathlib import Path

from pocgrid.report import write_report
from pocgrid.report.html import count_marks
from tests.browser import png_pixels, run_chromium
from tests.unit.report.sample import sample_doc


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def test_report_opens_without_errors_and_its_charts_are_drawn(tmp_path: Path) -> None:
    doc = sample_doc()
    page = write_report(doc, tmp_path / "out")[0]
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<link" not in text, "the report must not fetch anything"
    marks = count_marks(text)
    # 3 chips x (curve line + 7 points) twice (latency, Pareto), the frontier, cost bars, ...
    assert marks > 60, marks

    dom = run_chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    assert "data-errors" not in body.group(0), body.group(0)
    # Every mark was laid out with a size by the browser: the charts are drawn, not just there.
    assert f'data-drawn="{marks}"' in body.group(0), (body.group(0), marks)
    # latency + Pareto + cost for llm-chat; latency + cost + accuracy for image-classification
    assert 'data-charts="6"' in body.group(0), body.group(0)

    shot = tmp_path / "report.png"
    res = run_chromium([f"--screenshot={shot}", page.as_uri()], tmp_path, window="1400,2600")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 2600)

    def pixels_near(colour: str, tolerance: int = 12) -> int:
        r0, g0, b0 = _hex(colour)
        n = 0
        for row in rows[::2]:
            for x in range(0, width * 3, 6):
                if (
                    abs(row[x] - r0) <= tolerance
                    and abs(row[x + 1] - g0) <= tolerance
                    and abs(row[x + 2] - b0) <= tolerance
                ):
                    n += 1
        return n

    # The first chip's colour (lines and points), the SLO-met green of the cost bars, and the
    # accuracy bars are on screen in quantity.
    assert pixels_near("#1f77b4") > 300, pixels_near("#1f77b4")
    assert pixels_near("#2ca02c") > 2000, pixels_near("#2ca02c")
    assert pixels_near("#ff7f0e") > 300, pixels_near("#ff7f0e")
