"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start on a free port.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` system user. Tests that need it skip, saying why, when no server binaries exist.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[list[str], int | None]:
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"], user.pw_uid


def postgres_server() -> Iterator[str]:
    if not PG_BIN_DIRS or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server binaries not installed")
    bindir = PG_BIN_DIRS[0]
    prefix, uid = _as_user()
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    tmp_path = Path(tempfile.mkdtemp(prefix="pocgrid-pg-"))
    data = tmp_path / "pgdata"
    data.mkdir()
    if uid is not None:
        os.chown(tmp_path, uid, -1)
        os.chown(data, uid, -1)
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "pocgrid",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    log = tmp_path / "pg.log"
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k {tmp_path} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not become ready: " + log.read_text())
            time.sleep(0.1)
        subprocess.run(
            [
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "pocgrid",
                "pocgrid",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://pocgrid@127.0.0.1:{port}/pocgrid"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
