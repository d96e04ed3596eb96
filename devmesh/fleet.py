"""Which agents a local mesh runs, checked before anything starts."""

from __future__ import annotations

from pocgrid.catalog import Catalog, UnknownChipError, default_catalog
from pocgrid.limits import MAX_DEVICES_PER_NODE


class FleetError(ValueError):
    """``--chips`` or ``--devices`` asks for a fleet the mesh cannot run; says which and why."""


def plan_fleet(chips: str | None, devices: int, catalog: Catalog | None = None) -> tuple[str, ...]:
    """The chip slugs to run one agent each of: every emulatable chip when ``chips`` is empty or
    None, else the comma-separated slugs, each known, emulatable and listed once."""
    catalog = default_catalog() if catalog is None else catalog
    bad_devices = not 1 <= devices <= MAX_DEVICES_PER_NODE
    devices_problem = f"--devices: must be 1..{MAX_DEVICES_PER_NODE} per agent (got {devices})"
    if chips is None:
        if bad_devices:
            raise FleetError(devices_problem)
        return tuple(c.name for c in catalog.emulatable_chips())
    names = [c.strip() for c in chips.split(",")]
    if not any(names):
        raise FleetError("--chips: name at least one chip (or leave it out for every one)")
    problems: list[str] = []
    seen: set[str] = set()
    unavailable = False
    for name in names:
        if not name:
            problems.append("an empty name (two commas in a row?)")
            continue
        if name in seen:
            problems.append(f"{name!r} is listed twice")
            continue
        seen.add(name)
        try:
            chip = catalog.chip(name)
        except UnknownChipError as exc:
            problems.append(str(exc))
            unavailable = True
            continue
        if not chip.emulatable:
            problems.append(
                f"{name!r} cannot be emulated (the catalogue lacks a public figure the "
                "performance model needs: memory, bandwidth or a 16-bit peak)"
            )
            unavailable = True
    if problems or bad_devices:
        hint = _emulatable_hint(catalog) if unavailable else ""
        lines = [devices_problem] if bad_devices else []
        if problems:
            lines.append("--chips: " + "; ".join(problems) + hint)
        raise FleetError("\n".join(lines))
    return tuple(names)


def _emulatable_hint(catalog: Catalog) -> str:
    return "; emulatable chips: `pocgrid chips --emulatable` or " + ", ".join(
        c.name for c in catalog.emulatable_chips()
    )
