"""The adaptation heatmap opens in headless Chromium without errors and draws its cells.

Needs a Chromium on PATH; `make test` installs Debian's package through
scripts/ensure_chromium.sh, so this test fails (it does not skip) where none can be found.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from pocgrid.adapt.adapt import matrix
from pocgrid.adapt.html import _COLOURS, matrix_html
from pocgrid.catalog import default_catalog
from tests.browser import png_pixels as _png_pixels
from tests.browser import run_chromium

#: Console messages (console.error, uncaught exceptions) go to stderr as INFO:CONSOLE lines.
CONSOLE_TO_STDERR = ["--enable-logging=stderr", "--v=0"]


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_chromium([*CONSOLE_TO_STDERR, *args], tmp)


def test_heatmap_opens_in_headless_chromium_and_draws_cells(tmp_path: Path) -> None:
    cells = [a.cell() for a in matrix(default_catalog())]
    page = tmp_path / "matrix.html"
    page.write_text(matrix_html(cells, 1.0), encoding="utf-8")
    dom = _run(["--dump-dom", page.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    assert "data-errors" not in body.group(0), body.group(0)
    assert f'data-drawn="{len(cells)}"' in body.group(0), body.group(0)
    assert "CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    # The "shade by" view: one pass's modelled gain on every chip.
    shaded = _run(["--dump-dom", page.as_uri() + "#shade=prefix_caching"], tmp_path)
    body = re.search(r"<body[^>]*>", shaded.stdout)
    assert body is not None and 'data-shade="prefix_caching"' in body.group(0), shaded.stdout[:500]
    llm_cells = sum(1 for c in cells if c["output_tokens_per_s"] is not None)
    assert f'data-shaded="{llm_cells}"' in body.group(0), body.group(0)
    assert "CONSOLE" not in shaded.stderr, shaded.stderr[-2000:]
    shot = tmp_path / "matrix.png"
    res = _run([f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    width, _height, rows = _png_pixels(shot.read_bytes())
    # Cells are drawn: many pixels carry a verdict colour blended on white.
    coloured = 0
    for row in rows[::4]:
        for x in range(0, width * 3, 12):
            r, g, b = row[x], row[x + 1], row[x + 2]
            if max(r, g, b) - min(r, g, b) > 40:
                coloured += 1
    assert coloured > 2000, coloured
    assert len(_COLOURS) == 5
