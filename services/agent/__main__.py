"""``python -m services.agent --chip ascend-910b2 --devices 8``: flags override POCGRID_* env."""

from __future__ import annotations

import argparse
import os
import sys

from services.agent.service import AgentServer
from services.core.config import ConfigError
from services.core.service import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.agent", description=__doc__)
    parser.add_argument("--chip", help="catalogue chip slug (POCGRID_CHIP)")
    parser.add_argument("--devices", type=int, help="devices on this node (POCGRID_DEVICES)")
    parser.add_argument("--node-id", help="stable node id (POCGRID_NODE_ID)")
    parser.add_argument("--registry", help="registry HOST:PORT (POCGRID_REGISTRY_ADDR)")
    parser.add_argument("--listen", help="HOST:PORT to bind (POCGRID_LISTEN)")
    args = parser.parse_args(argv)
    flags = {
        "POCGRID_CHIP": args.chip,
        "POCGRID_DEVICES": args.devices,
        "POCGRID_NODE_ID": args.node_id,
        "POCGRID_REGISTRY_ADDR": args.registry,
        "POCGRID_LISTEN": args.listen,
    }
    os.environ.update({k: str(v) for k, v in flags.items() if v is not None})
    try:
        run(AgentServer.from_env)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None


main()
