"""``pocgrid perf predict`` as registered into a parent parser."""

from __future__ import annotations

import argparse
import json

import pytest

from pocgrid.perf.cli import register


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pocgrid")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


BASE = [
    "perf",
    "predict",
    "--chip",
    "A100 80GB SXM",
    "--devices",
    "1",
    "--model",
    "Llama-2-7B",
    "--precision",
    "fp16",
    "--batch",
    "16",
    "--input-len",
    "128",
    "--output-len",
    "32",
]


def test_human_output_is_a_small_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(BASE) == 0
    out = capsys.readouterr().out
    assert "throughput" in out and "TTFT" in out and "TPOT" in out and "fits" in out
    assert "a100-80gb-sxm" in out


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*BASE, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["fits"] is True
    for key in ("output_tokens_per_s", "ttft_ms", "tpot_ms", "memory_gib"):
        assert isinstance(doc[key], float)


def test_server_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*BASE, "--scenario", "server", "--qps", "2", "--requests", "50", "--json"]
    assert run(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"] == "server" and doc["server"]["requests"] == 50


def test_errors_go_to_stderr_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a if a != "16" else "0" for a in BASE]
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "error: batch: must be >= 1"
    assert captured.out == ""
    assert run([*BASE[:3], "nope", *BASE[4:]]) == 2
    assert capsys.readouterr().err.startswith("error: chip: unknown chip 'nope'")


def test_perf_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["perf"]) == 2
    assert "error: perf: a command is required" in capsys.readouterr().err
