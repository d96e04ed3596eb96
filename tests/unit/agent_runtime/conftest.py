"""Fixtures for the vendor-runtime tests: real catalogue chips, one per vendor family."""

from __future__ import annotations

import pytest

from pocgrid.catalog import Catalog, Chip, default_catalog
from services.agent.runtime import VendorRuntime, create_runtime

# One real catalogue chip per family. Enflame has no memory figure in the catalogue; its S60
# runs on the memory the Enflame profile records (from the vendor's device-plugin data).
CHIP_PER_FAMILY: dict[str, str] = {
    "ascend": "ascend-910b2",
    "cambricon": "mlu370-x8",
    "hygon": "dcu-k100-ai",
    "kunlunxin": "kunlun-r200",
    "moorethreads": "mtt-s4000",
    "iluvatar": "bi-v100",
    "metax": "metax-c500",
    "biren": "br104",
    "enflame": "enflame-s60",
    "nvidia": "a100-80gb-sxm",
    "amd": "mi300x",
}


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(params=sorted(CHIP_PER_FAMILY))
def family(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def family_chip(family: str, catalog: Catalog) -> Chip:
    return catalog.chip(CHIP_PER_FAMILY[family])


@pytest.fixture
def family_runtime(family_chip: Chip) -> VendorRuntime:
    return create_runtime(family_chip, 2, node_seed="test-node")
