"""Generate the Python API package ``pocgrid.v1`` from ``protos/``.

The one way to produce generated code: ``python -m tools.gen_protos`` (or ``make protos``).
``--check`` regenerates into a temporary directory and fails when the committed files differ,
which is how CI catches code that drifted from the ``.proto`` contract.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
PACKAGE_DIR = Path("pocgrid") / "v1"
INIT_TEXT = '"""Generated from protos/pocgrid/v1 by tools/gen_protos.py. Do not edit."""\n'


def _protoc_plugin(name: str) -> str:
    # The plugins are console scripts installed next to the running interpreter.
    candidate = Path(sys.executable).parent / name
    found = candidate if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extras (pip install -e '.[dev]')")
    return str(found)


def generate(out_dir: Path) -> None:
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "pocgrid").rglob("*.proto")
    )
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={_protoc_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_protoc_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    # The mypy plugins narrate every file they write; show protoc's output only on failure.
    result = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"protoc failed with exit code {result.returncode}")
    (out_dir / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)


def _differences(generated: Path, committed: Path) -> list[str]:
    gen_files = {p.relative_to(generated) for p in generated.rglob("*") if p.is_file()}
    com_files = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
    com_files = {p for p in com_files if "__pycache__" not in p.parts}
    diffs = [f"missing: {p}" for p in sorted(gen_files - com_files)]
    diffs += [f"not generated (stale): {p}" for p in sorted(com_files - gen_files)]
    for rel in sorted(gen_files & com_files):
        if not filecmp.cmp(generated / rel, committed / rel, shallow=False):
            diffs.append(f"differs: {rel}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if pocgrid/v1 is out of date")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        if args.check:
            diffs = _differences(out / PACKAGE_DIR, REPO / PACKAGE_DIR)
            if diffs:
                print("generated code is out of date; run `make protos`:", *diffs, sep="\n  ")
                return 1
            print("generated code is up to date")
            return 0
        target = REPO / PACKAGE_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(out / PACKAGE_DIR, target)
    print(f"generated {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
