"""The local mesh's checks and messages that need no running mesh: the fleet a `pocgrid up`
asks for, why a child ended, and what progress looks like on a terminal and in a log."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from devmesh.fleet import FleetError, plan_fleet
from devmesh.launcher import exit_cause
from devmesh.progress import Progress
from pocgrid.catalog import default_catalog


def test_fleet_defaults_to_every_emulatable_chip():
    assert plan_fleet(None, 8) == tuple(c.name for c in default_catalog().emulatable_chips())
    assert plan_fleet(" ascend-910b2,bi-v100 ", 1) == ("ascend-910b2", "bi-v100")


@pytest.mark.parametrize(
    ("chips", "devices", "says"),
    [
        ("nope", 8, "unknown chip 'nope'"),
        ("ascend-910b2,ascend-910b2", 8, "'ascend-910b2' is listed twice"),
        ("ascend-910b2,,bi-v100", 8, "an empty name"),
        ("", 8, "name at least one chip"),
        ("ascend-910b2", 0, "--devices: must be 1..64 per agent (got 0)"),
        ("ascend-910b2", 65, "--devices: must be 1..64 per agent (got 65)"),
        (None, -1, "--devices: must be 1..64"),
    ],
)
def test_fleet_refuses_what_cannot_run(chips, devices, says):
    with pytest.raises(FleetError, match=None) as info:
        plan_fleet(chips, devices)
    assert says in str(info.value)


def test_a_chip_that_cannot_be_emulated_is_named_with_the_reason():
    chip = next(c for c in default_catalog().chips if not c.emulatable)
    with pytest.raises(FleetError) as info:
        plan_fleet(f"ascend-910b2,{chip.name}", 8)
    message = str(info.value)
    assert f"{chip.name!r} cannot be emulated" in message
    assert "ascend-910b2" in message.split("emulatable chips:")[1]  # the way out


def test_every_problem_is_reported_at_once():
    with pytest.raises(FleetError) as info:
        plan_fleet("nope,bi-v100,bi-v100", 0)
    message = str(info.value)
    assert "--devices" in message and "unknown chip 'nope'" in message and "twice" in message


def test_exit_cause_reads_the_last_logged_error(tmp_path: Path):
    log = tmp_path / "gateway.log"
    lines = [
        {"event": "gateway.starting", "level": "info"},
        {
            "event": "service.failed",
            "level": "error",
            "exception": "Traceback ...\nConfigError: tenant 'Bad': must match [a-z0-9]",
        },
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert exit_cause(log) == "service.failed: ConfigError: tenant 'Bad': must match [a-z0-9]"


def test_exit_cause_reads_a_plain_traceback(tmp_path: Path):
    log = tmp_path / "registry.log"
    log.write_text(
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "OSError: [Errno 98] address already in use\n"
    )
    assert exit_cause(log) == "OSError: [Errno 98] address already in use"
    assert exit_cause(tmp_path / "absent.log").startswith("no log at")


def test_progress_on_a_terminal_redraws_one_line():
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.waiting("waiting for registry")
    progress.waiting("waiting for registry")  # within 0.1 s of the last draw: not redrawn
    progress.waiting("waiting for gateway")
    progress.step("started registry 127.0.0.1:1")
    progress.done()
    text = out.getvalue()
    assert text.count("waiting for registry") == 1 and "waiting for gateway" in text
    assert text.count("\r\x1b[2K") == 3 and text.count("\n") == 1
    assert "started registry" in text


def test_progress_in_a_log_prints_each_change_once():
    out = io.StringIO()
    progress = Progress(out, tty=False)
    for message in ("waiting for a", "waiting for a", "waiting for b"):
        progress.waiting(message)
    progress.step("started b")
    assert out.getvalue() == "  ... waiting for a\n  ... waiting for b\n  started b\n"
    assert "\r" not in out.getvalue()


def test_the_cli_without_devmesh_says_what_is_missing(monkeypatch, capsys):
    import sys

    import devmesh
    from pocgrid.cli.main import main

    # As if the install had no launcher: the module cannot be imported, nor found on the package.
    monkeypatch.setitem(sys.modules, "devmesh.lifecycle", None)
    monkeypatch.delattr(devmesh, "lifecycle", raising=False)
    assert main(["up", "--detach"]) == 1
    assert "needs the local-mesh launcher (the devmesh package)" in capsys.readouterr().err
