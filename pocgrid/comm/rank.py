"""``python -m pocgrid.comm.rank JOB.json``: one rank process of ``launch.run_ranks``.

Reads the job, joins the communicator, runs the target and writes ``JOB.json.result``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pocgrid.comm.launch import rank_main


def main(argv: list[str]) -> int:
    job_file = Path(argv[1])
    result = rank_main(json.loads(job_file.read_text()))
    tmp = job_file.with_name(job_file.name + ".result.tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(job_file.with_name(job_file.name + ".result"))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
