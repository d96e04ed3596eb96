"""Device creation, memory accounting and vendor-style memory errors, for every family."""

from __future__ import annotations

from typing import cast

import pytest

from pocgrid.catalog import Catalog, Chip, VendorFamily, VendorProfile, default_catalog
from services.agent.runtime import (
    DeviceHealth,
    DeviceOutOfMemory,
    DeviceUnavailable,
    InvalidArgument,
    InvalidHandle,
    RuntimeConfigError,
    VendorRuntime,
    create_runtime,
)

GIB = 1024**3


def load_profile(family: str) -> VendorProfile:
    return default_catalog().vendor(cast("VendorFamily", family))


# What each family's runtime must say when it runs out of memory: the allocation API, the
# runtime's symbol and code, and the start of the vendor framework plugin's message.
EXPECTED_OOM: dict[str, tuple[str, str, int, str]] = {
    "ascend": ("aclrtMalloc", "ACL_ERROR_RT_MEMORY_ALLOCATION", 207001, "NPU out of memory."),
    "cambricon": ("cnrtMalloc", "cnrtErrorNoMem", 100100, "MLU out of memory."),
    "hygon": ("hipMalloc", "hipErrorOutOfMemory", 2, "HIP out of memory."),
    "kunlunxin": ("xpu_malloc", "XPUERR_NOMEM", 705, "Out of memory error on XPU 0."),
    "moorethreads": ("musaMalloc", "musaErrorMemoryAllocation", 2, "MUSA out of memory."),
    "iluvatar": ("cudaMalloc", "cudaErrorMemoryAllocation", 2, "CUDA out of memory."),
    "metax": ("mcMalloc", "mcErrorMemoryAllocation", 2, "CUDA out of memory."),
    "biren": ("suMallocDevice", "suErrorMemoryAllocation", 2, "SUPA out of memory."),
    "enflame": ("topsMalloc", "topsErrorOutOfMemory", 2, "GCU out of memory."),
    "nvidia": ("cudaMalloc", "cudaErrorMemoryAllocation", 2, "CUDA out of memory."),
    "amd": ("hipMalloc", "hipErrorOutOfMemory", 2, "HIP out of memory."),
}

EXPECTED_DEVICE_ID: dict[str, str] = {
    "ascend": "npu:1",
    "cambricon": "mlu:1",
    "hygon": "cuda:1",
    "kunlunxin": "xpu:1",
    "moorethreads": "musa:1",
    "iluvatar": "cuda:1",
    "metax": "cuda:1",
    "biren": "supa:1",
    "enflame": "gcu:1",
    "nvidia": "cuda:1",
    "amd": "cuda:1",
}


def test_every_family_builds_a_runtime_for_a_real_chip(
    family: str, family_chip: Chip, family_runtime: VendorRuntime
) -> None:
    rt = family_runtime
    assert rt.family == family == family_chip.vendor_family
    assert rt.device_count == 2
    second = rt.devices[1]
    assert second.index == 1
    assert second.device_id == EXPECTED_DEVICE_ID[family]
    assert second.name == family_chip.display_name
    assert second.health is DeviceHealth.HEALTHY
    assert second.memory_used_bytes == 0
    assert 0 < second.memory_reserved_bytes < second.memory_total_bytes
    if family_chip.memory_gib is not None:
        assert second.memory_total_bytes == round(family_chip.memory_gib * GIB)
    profile = load_profile(family)
    assert second.physical_device == profile.device_path(1)
    assert rt.smi_tool == profile.smi_tool.value
    assert rt.collective_library == profile.collective_library.value
    assert profile.runtime.version_example in rt.runtime_version


def test_over_allocation_raises_the_vendor_error_and_changes_nothing(
    family: str, family_runtime: VendorRuntime
) -> None:
    rt = family_runtime
    keep = rt.malloc(0, 64 * 1024 * 1024, tag="weights")
    before = rt.memory_info(0)
    too_big = before.free_bytes + 1

    with pytest.raises(DeviceOutOfMemory) as caught:
        rt.malloc(0, too_big, tag="kv-cache")

    api, symbol, code, framework_prefix = EXPECTED_OOM[family]
    err = caught.value
    assert (err.api, err.vendor_symbol, err.vendor_code) == (api, symbol, code)
    assert err.framework_message.startswith(framework_prefix)
    assert err.requested_bytes == too_big
    assert err.free_bytes == before.free_bytes
    assert err.device_index == 0
    assert f"{symbol} ({code})" in str(err)
    assert rt.memory_info(0) == before, "a refused allocation must not change accounting"

    # What does fit still succeeds, and everything frees back to zero.
    fitting = rt.malloc(0, before.free_bytes // 2, tag="kv-cache")
    assert rt.memory_info(0).used_bytes == before.used_bytes + fitting.charged_bytes
    rt.free(fitting)
    rt.free(keep)
    after = rt.memory_info(0)
    assert after.used_bytes == 0
    assert after.allocation_count == 0
    assert after.free_bytes == after.total_bytes - after.reserved_bytes


def test_double_free_raises_the_vendor_invalid_handle_error(
    family: str, family_runtime: VendorRuntime
) -> None:
    rt = family_runtime
    allocation = rt.malloc(1, 4096)
    rt.free(allocation)
    before = rt.memory_info(1)
    with pytest.raises(InvalidHandle) as caught:
        rt.free(allocation)
    spec = load_profile(family).errors.invalid_handle
    assert (caught.value.vendor_symbol, caught.value.vendor_code) == (spec.symbol, spec.code)
    assert caught.value.api == load_profile(family).memory.free_api
    assert rt.memory_info(1) == before


def test_oom_error_identities_differ_between_runtime_lineages() -> None:
    pairs = {(sym, code) for _api, sym, code, _text in EXPECTED_OOM.values()}
    # Eleven families, nine runtime lineages: Hygon/AMD share HIP, Iluvatar/NVIDIA share CUDA.
    assert len(pairs) == 9
    prefixes = {text.split(" ")[0] for *_rest, text in EXPECTED_OOM.values()}
    assert prefixes == {"NPU", "MLU", "HIP", "Out", "MUSA", "CUDA", "SUPA", "GCU"}


def test_ascend_charges_the_aclrtmalloc_rounding(catalog: Catalog) -> None:
    rt = create_runtime(catalog.chip("ascend-910b2"), 1)
    # aclrtMalloc rounds up to a multiple of 32 bytes and then adds 32.
    assert rt.malloc(0, 1).charged_bytes == 64
    assert rt.malloc(0, 32).charged_bytes == 64
    assert rt.malloc(0, 33).charged_bytes == 96
    cuda = create_runtime(catalog.chip("a100-80gb-sxm"), 1)
    assert cuda.malloc(0, 1).charged_bytes == 256


def test_addresses_are_aligned_and_distinct(family_runtime: VendorRuntime) -> None:
    rt = family_runtime
    align = rt.profile.memory.alignment_bytes.value
    allocations = [rt.malloc(0, n) for n in (1, 100, 4097)] + [rt.malloc(1, 1)]
    assert all(a.address % align == 0 for a in allocations)
    assert len({a.address for a in allocations}) == len(allocations)
    assert len({a.handle for a in allocations}) == len(allocations)


def test_exact_fit_succeeds_and_one_more_byte_fails(catalog: Catalog) -> None:
    rt = create_runtime(catalog.chip("mtt-s4000"), 1)
    free = rt.memory_info(0).free_bytes
    whole = rt.malloc(0, free)
    assert rt.memory_info(0).free_bytes == 0
    rt.free(whole)
    with pytest.raises(DeviceOutOfMemory):
        rt.malloc(0, free + 1)


def test_bad_arguments_raise_the_vendor_invalid_argument_error(
    family: str, family_runtime: VendorRuntime
) -> None:
    spec = load_profile(family).errors.invalid_argument
    for bad_size in (0, -5):
        with pytest.raises(InvalidArgument) as caught:
            family_runtime.malloc(0, bad_size)
        assert caught.value.vendor_code == spec.code
    with pytest.raises(InvalidArgument) as bad_ordinal:
        family_runtime.malloc(7, 1024)
    assert bad_ordinal.value.vendor_symbol == spec.symbol
    assert family_runtime.memory_info(0).used_bytes == 0


def test_freeing_another_runtimes_allocation_is_an_invalid_handle(catalog: Catalog) -> None:
    one = create_runtime(catalog.chip("ascend-910b2"), 1)
    other = create_runtime(catalog.chip("ascend-910b2"), 1)
    allocation = one.malloc(0, 1024)
    with pytest.raises(InvalidHandle):
        other.free(allocation)
    one.free(allocation)


def test_failed_device_refuses_work_until_it_recovers(
    family: str, family_runtime: VendorRuntime
) -> None:
    rt = family_runtime
    held = rt.malloc(0, 1024)
    rt.set_health(0, DeviceHealth.FAILED, "injected: uncorrectable ECC")
    info = rt.devices[0]
    assert (info.health, info.health_reason) == (DeviceHealth.FAILED, "injected: uncorrectable ECC")

    spec = load_profile(family).errors.device_unavailable
    with pytest.raises(DeviceUnavailable) as caught:
        rt.malloc(0, 1024)
    assert caught.value.vendor_code == spec.code
    assert "uncorrectable ECC" in caught.value.vendor_message
    with pytest.raises(DeviceUnavailable):
        rt.streams[0].submit(0.001, "kernel")
    # The other device is unaffected, and cleanup on the failed one is still possible.
    rt.free(rt.malloc(1, 1024))
    rt.free(held)
    assert rt.memory_info(0).used_bytes == 0

    rt.set_health(0, DeviceHealth.DEGRADED, "link errors")
    rt.free(rt.malloc(0, 1024))
    rt.set_health(0, DeviceHealth.HEALTHY)
    assert rt.devices[0].health is DeviceHealth.HEALTHY


def test_uuids_are_stable_per_node_seed_and_index(catalog: Catalog) -> None:
    chip = catalog.chip("a100-80gb-sxm")
    first = [d.uuid for d in create_runtime(chip, 4, node_seed="node-a").devices]
    again = [d.uuid for d in create_runtime(chip, 4, node_seed="node-a").devices]
    other = [d.uuid for d in create_runtime(chip, 4, node_seed="node-b").devices]
    assert first == again
    assert len(set(first)) == 4
    assert not set(first) & set(other)
    assert all(u.startswith("GPU-") for u in first)


def test_chip_without_any_memory_figure_is_refused(catalog: Catalog) -> None:
    with pytest.raises(RuntimeConfigError, match="memory"):
        create_runtime(catalog.chip("dcu-z100"), 1)


def test_device_count_is_bounded(catalog: Catalog) -> None:
    with pytest.raises(RuntimeConfigError):
        create_runtime(catalog.chip("ascend-910b2"), 0)
    with pytest.raises(RuntimeConfigError):
        create_runtime(catalog.chip("ascend-910b2"), 65)
