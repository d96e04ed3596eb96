"""The adaptation heatmap opens in headless Chromium without errors and draws its cells.

Needs a Chromium on PATH; `make test` installs Debian's package through
scripts/ensure_chromium.sh, so this test fails (it does not skip) where none can be found.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from pocgrid.adapt.adapt import matrix
from pocgrid.adapt.html import _COLOURS, matrix_html
from pocgrid.catalog import default_catalog


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("no chromium on PATH: run scripts/ensure_chromium.sh (make test does)")


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    base = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1800,1400",
    ]
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of a non-interlaced 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    i = 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        rows.append(
            bytes(line) if channels == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3)
        )
        prev = line
    return width, height, rows


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
