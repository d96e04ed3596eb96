"""The catalogue's vendor files and operator coverage: complete, consistent, honest."""

from __future__ import annotations

import copy
import dataclasses
import json
from importlib import resources
from typing import Any

import pytest

from pocgrid.catalog import (
    VENDOR_FAMILIES,
    Catalog,
    CatalogDataError,
    OperatorCatalog,
    Sourced,
    VendorFamily,
    VendorProfile,
    default_catalog,
)
from pocgrid.catalog.operators import parse_operators
from pocgrid.catalog.vendors import parse_profile

OOM_FIELDS = {
    "requested": "1.00 GiB",
    "device": 0,
    "total": "2 GiB",
    "free": "1 MiB",
    "allocated": "0",
}


def raw(family: str) -> dict[str, Any]:
    data_dir = resources.files("pocgrid.catalog").joinpath("data").joinpath("vendors")
    path = data_dir.joinpath(f"{family}.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def raw_operators() -> dict[str, Any]:
    path = resources.files("pocgrid.catalog").joinpath("data").joinpath("operators.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def all_profiles() -> dict[VendorFamily, VendorProfile]:
    return dict(default_catalog().vendors)


def load_profile(family: VendorFamily) -> VendorProfile:
    return default_catalog().vendor(family)


def load_operators() -> OperatorCatalog:
    return default_catalog().operators


def test_every_catalogue_family_has_a_profile() -> None:
    assert set(all_profiles()) == set(VENDOR_FAMILIES)
    assert set(load_operators().families) == set(VENDOR_FAMILIES)


def test_vendor_files_say_who_the_vendor_is() -> None:
    catalog = default_catalog()
    for chip in catalog.chips:
        profile = catalog.vendor(chip.vendor_family)
        assert chip.vendor == profile.vendor
        assert chip.domestic == profile.domestic
    assert {f for f, p in all_profiles().items() if not p.domestic} == {"nvidia", "amd"}


def test_chip_specific_entries_name_real_chips_of_that_family() -> None:
    catalog = default_catalog()
    by_name = {c.name: c for c in catalog.chips}
    for family, profile in all_profiles().items():
        for slug in profile.chips:
            assert slug in by_name, f"{family} profile names unknown chip {slug}"
            assert by_name[slug].vendor_family == family
    for family, ops in load_operators().families.items():
        for slug in ops.chip_missing:
            assert by_name[slug].vendor_family == family


def test_profiles_differ_in_data_not_just_names() -> None:
    profiles = all_profiles().values()
    assert len({p.smi_tool.value for p in profiles}) == 11
    assert len({p.memory.malloc_api for p in profiles}) == 9  # HIP and CUDA are shared
    assert len({p.device_node.value for p in profiles}) >= 8
    assert len({p.torch_device_type.value for p in profiles}) == 7
    assert len({p.collective_library.value for p in profiles}) == 11
    assert len({p.errors.out_of_memory.framework_message.value for p in profiles}) >= 7
    assert len({p.precisions.default for p in profiles}) >= 4
    assert len({p.memory.reserved_bytes for p in profiles}) >= 5
    ascend = load_profile("ascend").memory
    nvidia = load_profile("nvidia").memory
    assert ascend.charged_bytes(100) == 160  # round to 32, add 32
    assert nvidia.charged_bytes(100) == 256


def test_message_templates_use_only_the_fields_the_runtime_supplies() -> None:
    for family, profile in all_profiles().items():
        oom = profile.errors.out_of_memory
        assert oom.error.message.format(**OOM_FIELDS), family
        assert "1.00 GiB" in oom.framework_message.value.format(**OOM_FIELDS), family
        for spec in (
            profile.errors.invalid_argument,
            profile.errors.invalid_handle,
            profile.errors.device_unavailable,
        ):
            assert spec.message.format(device=0), family


def test_verified_facts_carry_sources_and_estimates_say_why() -> None:
    for family, profile in all_profiles().items():
        sourced: list[Sourced[Any]] = [
            profile.smi_tool,
            profile.torch_device_type,
            profile.device_node,
            profile.collective_library,
            profile.memory.alignment_bytes,
            profile.memory.hidden_mib,
            profile.errors.out_of_memory.framework_message,
        ]
        for item in sourced:
            assert item.sources or not item.verified, family
            assert item.verified or item.note or item.sources, f"{family}: estimate without a note"
    unverified_smi = {f for f, p in all_profiles().items() if not p.smi_tool.verified}
    assert unverified_smi == {"enflame"}


def test_every_operator_gap_has_a_reason() -> None:
    catalog = load_operators()
    for family in catalog.families.values():
        gaps = list(family.missing.values())
        gaps += [g for chip in family.chip_missing.values() for g in chip.values()]
        for gap in gaps:
            assert gap.reason.strip(), f"{family.family}:{gap.op}"
            assert gap.basis in ("documented", "estimate")


def test_loader_rejects_a_verified_entry_without_sources() -> None:
    data = raw("ascend")
    data["smi_tool"]["sources"] = []
    with pytest.raises(
        CatalogDataError, match=r"smi_tool: verified=true needs at least one source"
    ):
        parse_profile(data, "ascend.json")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("precisions", "default", "value"), ["fp16", "fp4"], "unknown precision"),
        (("device_node", "value"), "/dev/davinci", "needs {index} or {render}"),
        (("memory", "alignment_bytes", "value"), 48, "power of two"),
        (("errors", "out_of_memory", "code"), "207001", "expected an integer"),
        (("family",), "huawei", "is not one of"),
    ],
)
def test_loader_names_the_broken_field(path: tuple[str, ...], value: object, message: str) -> None:
    data = copy.deepcopy(raw("ascend"))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CatalogDataError, match=message):
        parse_profile(data, "ascend.json")


def test_missing_key_is_reported_with_its_location() -> None:
    data = raw("cambricon")
    del data["errors"]["invalid_handle"]
    with pytest.raises(
        CatalogDataError, match=r"cambricon.json.errors: missing key 'invalid_handle'"
    ):
        parse_profile(data, "cambricon.json")


def test_operator_loader_rejects_gaps_outside_the_base_set() -> None:
    data = raw_operators()
    data["families"]["biren"]["missing"]["NotAnOnnxOp"] = {
        "reason": "x",
        "basis": "estimate",
        "sources": [],
    }
    with pytest.raises(CatalogDataError, match="not in the base operator set"):
        parse_operators(data, "operators.json")


def test_operator_loader_requires_a_source_for_documented_gaps() -> None:
    data = raw_operators()
    data["families"]["nvidia"]["missing"]["Unique"] = {
        "reason": "x",
        "basis": "documented",
        "sources": [],
    }
    with pytest.raises(CatalogDataError, match="needs a source"):
        parse_operators(data, "operators.json")


def test_catalogue_refuses_vendor_entries_for_chips_it_does_not_have() -> None:
    cat = default_catalog()
    data = raw("ascend")
    data["chips"]["ascend-9999"] = data["chips"]["ascend-910b2"]
    vendors = dict(cat.vendors)
    vendors["ascend"] = parse_profile(data, "ascend.json")
    with pytest.raises(CatalogDataError, match="'ascend-9999' is not a chip of the catalogue"):
        Catalog(cat.chips, cat.models, vendors, cat.operators)
    data = raw("ascend")
    data["chips"]["a100-80gb-sxm"] = data["chips"]["ascend-910b2"]
    vendors["ascend"] = parse_profile(data, "ascend.json")
    with pytest.raises(CatalogDataError, match="'a100-80gb-sxm' is a nvidia chip"):
        Catalog(cat.chips, cat.models, vendors, cat.operators)


def test_per_chip_lookups_combine_the_chip_table_and_the_vendor_file() -> None:
    cat = default_catalog()
    b2 = cat.chip("ascend-910b2")
    assert cat.precisions(b2) == ("fp32", "fp16", "bf16", "int8")
    assert cat.precisions(cat.chip("ascend-310p")) == ("fp16", "int8")  # per-chip override
    assert cat.compute_units(b2) is not None
    assert cat.native_operators(b2) == cat.operators.base - set(cat.operator_gaps(b2))
    s60 = cat.chip("enflame-s60")
    assert s60.memory_gib == 48.0 == cat.device_memory_gib(s60)  # table and vendor file agree
    # Without a table figure, the vendor file's SMI figure answers.
    assert cat.device_memory_gib(dataclasses.replace(s60, memory_gib=None)) == 48.0
    bare = Catalog(cat.chips, cat.models)
    with pytest.raises(CatalogDataError, match="without vendor profiles"):
        bare.precisions(b2)
