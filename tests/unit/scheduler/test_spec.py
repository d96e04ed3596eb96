"""The scheduler's JobSpec rules, without a mesh: normalisation, refusals naming the field and
the rule, the chip types a job may use, and the library demand it becomes."""

from __future__ import annotations

from typing import Any

import pytest

from pocgrid.catalog import default_catalog
from pocgrid.price_book import default_price_book
from pocgrid.sched import WHOLE
from pocgrid.sched.policies.cost import Cost
from pocgrid.sched.shaping import Shaped
from pocgrid.tariff import Period
from pocgrid.v1 import common_pb2, scheduler_pb2
from services.core.config import ConfigError
from services.core.errors import FailedPrecondition, InvalidArgument
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import live_policy
from services.scheduler.spec import GIB, SpecChecker, demand, step_seconds

CHECK = SpecChecker(default_catalog())
#: The adapter's id of an imported ONNX graph (pocgrid.adapt.model_ids).
IMPORTED = "onnx-" + "0123456789abcdef" * 2


def _spec(**overrides: Any) -> scheduler_pb2.JobSpec:
    fields: dict[str, Any] = {
        "model": "qwen2.5-7b",
        "devices": 1,
        "precision": common_pb2.PRECISION_FP16,
    }
    fields.update(overrides)
    return scheduler_pb2.JobSpec(**fields)


def test_defaults_are_filled_and_any_means_chips_that_run_the_precision():
    out = CHECK.normalise(_spec(precision=common_pb2.PRECISION_BF16))
    cat = default_catalog()
    assert out.model == "Qwen2.5-7B" and out.kind == scheduler_pb2.JOB_KIND_BATCH
    assert out.batch == scheduler_pb2.BatchWork(steps=1, batch=1, input_len=128, output_len=128)
    # Batch work: those whose runtime runs bf16 and where the performance model can price a
    # step (some chips publish no bf16 peak, and the agent could not time the work there).
    assert set(out.allowed_chips) == {
        c.name
        for c in cat.emulatable_chips()
        if "bf16" in cat.precisions(c)
        and step_seconds(c.name, 1, "Qwen2.5-7B", "bf16", 1, 128, 128) is not None
    }
    assert "mlu590" not in out.allowed_chips  # no published bf16 peak
    held = CHECK.normalise(
        _spec(precision=common_pb2.PRECISION_BF16, kind=scheduler_pb2.JOB_KIND_EVALUATION)
    )
    assert "mlu590" in held.allowed_chips  # an evaluation only holds devices
    assert "ascend-910" not in out.allowed_chips  # the 910's runtime has no bf16
    assert out.replicas == 1


def test_a_fraction_of_a_device_holds_what_the_model_needs():
    out = CHECK.normalise(_spec(chip="ascend-910b2", device_share=0.5))
    # Qwen2.5-7B fp16 weights alone are about 14 GiB; the whole device has 64.
    assert 14 * GIB < out.memory_bytes < 64 * GIB
    d = demand(scheduler_pb2.Job(job_id="j", tenant="t", spec=out))
    assert d.share_milli == WHOLE // 2 and d.memory_gib == pytest.approx(out.memory_bytes / GIB)
    assert d.chips == frozenset({"ascend-910b2"}) and d.single_node


def test_adapter_fits_keeps_only_the_chip_types_the_model_fits():
    out = CHECK.normalise(
        _spec(
            model="Qwen2.5-72B",
            devices=4,
            allowed_chips=["ascend-910b2", "rtx-4090", "h200-141gb-sxm"],
            chip_choice=scheduler_pb2.CHIP_CHOICE_ADAPTER_FITS,
        )
    )
    # 72B at fp16 is about 145 GB of weights: four 24 GB RTX 4090s cannot hold it.
    assert list(out.allowed_chips) == ["ascend-910b2", "h200-141gb-sxm"]
    with pytest.raises(FailedPrecondition) as err:
        CHECK.normalise(
            _spec(
                model="Qwen2.5-72B",
                allowed_chips=["rtx-4090"],
                chip_choice=scheduler_pb2.CHIP_CHOICE_ADAPTER_FITS,
            )
        )
    assert err.value.message.startswith("spec.chip_choice")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"chip": "nosuch"}, "spec.chip"),
        ({"allowed_chips": ["ascend-910b2", "nosuch"]}, "spec.allowed_chips[1]"),
        ({"model": "gpt-17"}, "spec.model"),
        ({"devices": 0}, "spec.devices"),
        ({"devices": 65}, "spec.devices"),
        ({"device_share": 1.5}, "spec.device_share"),
        ({"devices": 2, "device_share": 0.5}, "spec.devices"),
        ({"replicas": 2}, "spec.replicas"),
        ({"kind": scheduler_pb2.JOB_KIND_SERVING, "preemptible": True}, "spec.preemptible"),
        ({"chip": "ascend-910", "precision": common_pb2.PRECISION_BF16}, "spec.precision"),
        ({"batch": scheduler_pb2.BatchWork(steps=2_000_000)}, "spec.batch.steps"),
        ({"memory_bytes": -1}, "spec.memory_bytes"),
        ({"precision": common_pb2.PRECISION_UNSPECIFIED}, "spec.precision"),
        ({"kind": 9}, "spec.kind"),
        # An imported model's id is a model only for an evaluation on a named chip.
        ({"model": IMPORTED, "chip": "ascend-910b2"}, "spec.model"),
        ({"model": IMPORTED, "kind": scheduler_pb2.JOB_KIND_EVALUATION}, "spec.chip"),
        (
            {
                "model": IMPORTED,
                "kind": scheduler_pb2.JOB_KIND_EVALUATION,
                "chip": "ascend-910b2",
                "chip_choice": scheduler_pb2.CHIP_CHOICE_ADAPTER_FITS,
            },
            "spec.chip_choice",
        ),
        (
            {
                "model": IMPORTED,
                "kind": scheduler_pb2.JOB_KIND_EVALUATION,
                "chip": "ascend-910b2",
                "device_share": 0.5,
            },
            "spec.memory_bytes",
        ),
        ({"model": "onnx-" + "0" * 31, "kind": scheduler_pb2.JOB_KIND_EVALUATION}, "spec.model"),
    ],
)
def test_bad_specs_name_the_field(overrides, field):
    with pytest.raises(InvalidArgument) as err:
        CHECK.normalise(_spec(**overrides))
    assert err.value.field == field


def test_an_evaluation_of_an_imported_model_holds_devices_of_its_named_chip():
    out = CHECK.normalise(
        _spec(model=IMPORTED, kind=scheduler_pb2.JOB_KIND_EVALUATION, chip="ascend-910b2")
    )
    assert out.model == IMPORTED and out.chip == "ascend-910b2" and out.devices == 1
    d = demand(scheduler_pb2.Job(job_id="j", tenant="t", spec=out))
    assert d.chips == frozenset({"ascend-910b2"}) and d.devices == 1 and d.work == 0.0


def test_serving_replicas_are_one_demand_and_gang_may_span_nodes():
    out = CHECK.normalise(
        _spec(kind=scheduler_pb2.JOB_KIND_SERVING, devices=2, replicas=3, gang=True)
    )
    d = demand(scheduler_pb2.Job(job_id="j", tenant="t", spec=out))
    assert d.devices == 6 and not d.single_node and d.kind == "serving" and d.work == 0
    assert not out.HasField("batch")


def test_serving_replicas_without_gang_are_one_demand_each_with_a_minimum():
    out = CHECK.normalise(_spec(kind=scheduler_pb2.JOB_KIND_SERVING, devices=2, replicas=3))
    assert out.min_replicas == 3  # 0 means all of them
    job = scheduler_pb2.Job(job_id="j", tenant="t", spec=out)
    one = demand(job, 1)
    assert (one.job_id, one.devices, one.single_node) == ("j/r1", 2, True)
    assert demand(job).devices == 2  # the shape of any one replica (the submit-time pool check)
    some = CHECK.normalise(_spec(kind=scheduler_pb2.JOB_KIND_SERVING, replicas=3, min_replicas=2))
    assert some.min_replicas == 2
    for overrides, field in (
        (
            {"kind": scheduler_pb2.JOB_KIND_SERVING, "replicas": 2, "min_replicas": 3},
            "spec.min_replicas",
        ),
        ({"min_replicas": 1}, "spec.min_replicas"),
    ):
        with pytest.raises(InvalidArgument) as err:
            CHECK.normalise(_spec(**overrides))
        assert err.value.field == field


def test_batch_demand_is_the_steps_left_priced_per_chip_by_the_performance_model():
    out = CHECK.normalise(
        _spec(
            allowed_chips=["ascend-910b2", "h100-80gb-sxm"],
            batch=scheduler_pb2.BatchWork(steps=10),
            preemptible=True,
        )
    )
    d = demand(scheduler_pb2.Job(job_id="j", tenant="t", spec=out, steps_done=4))
    npu = step_seconds("ascend-910b2", 1, "Qwen2.5-7B", "fp16", 1, 128, 128)
    gpu = step_seconds("h100-80gb-sxm", 1, "Qwen2.5-7B", "fp16", 1, 128, 128)
    assert npu and gpu
    assert d.work == pytest.approx(6 * npu) and d.preemptible and d.kind == "batch"
    # Seconds on a chip type are work over its speed: six steps of that chip's step time.
    assert d.work / d.speed_on("h100-80gb-sxm") == pytest.approx(6 * gpu)
    assert d.speed_on("ascend-910b2") == 1.0


def test_batch_work_that_fits_no_allowed_chip_is_refused():
    with pytest.raises(FailedPrecondition) as err:
        CHECK.normalise(_spec(model="Qwen2.5-72B", chip="rtx-4090"))
    assert err.value.message.startswith("spec.chip: one step of Qwen2.5-72B")
    assert "rtx-4090" in err.value.message and "GiB" in err.value.message
    out = CHECK.normalise(_spec(model="Qwen2.5-72B", allowed_chips=["rtx-4090", "h200-141gb-sxm"]))
    assert list(out.allowed_chips) == ["h200-141gb-sxm"]


def test_quota_settings():
    book = SchedulerConfig(scheduler_quotas="acme=4:2, globex=1.5").quota_book()
    assert book is not None
    assert book.quota("acme").guaranteed_milli == 4000
    assert book.quota("acme").borrow_limit_milli == 2000
    assert book.quota("globex").borrow_limit_milli is None
    assert book.quota("someone").guaranteed_milli == 0
    assert SchedulerConfig().quota_book() is None
    for bad in ("acme", "acme=x", "=3"):
        with pytest.raises(ConfigError, match="POCGRID_SCHEDULER_QUOTAS"):
            SchedulerConfig(scheduler_quotas=bad)
    with pytest.raises(ConfigError, match="POCGRID_SCHEDULER_POLICY"):
        SchedulerConfig(scheduler_policy="lottery")


def test_tariff_setting_is_read_and_checked(tmp_path):
    good = tmp_path / "tariff.json"
    good.write_text(
        '{"hours": {"0": "valley", "8": "peak"}, "multipliers": {"peak": 2, "valley": 0.5},'
        ' "cap_devices": {"peak": 4}}',
        encoding="utf-8",
    )
    config = SchedulerConfig(scheduler_policy="cost", scheduler_tariff_file=str(good))
    tariff = config.tariff()
    assert tariff is not None and tariff.cap.devices == {Period.PEAK: 4.0}
    policy = live_policy(config, default_catalog())
    assert policy.name == "cost+shaping"
    assert isinstance(policy, Shaped) and isinstance(policy.inner, Cost)
    # the live cost policy ranks chip types by the default price book's card-hours
    assert policy.inner.prices["h20-96gb"] == float(default_price_book().card("h20-96gb").card_hour)
    assert live_policy(SchedulerConfig(), default_catalog()).name == "fifo"
    bad = tmp_path / "bad.json"
    bad.write_text('{"hours": {"0": "valley"}, "cap_devices": {"peak": -1}}', encoding="utf-8")
    for path, rule in (
        (bad, "tariff.cap_devices.peak: must be a number >= 0"),
        (tmp_path / "missing.json", "No such file"),
    ):
        with pytest.raises(ConfigError, match="POCGRID_SCHEDULER_TARIFF_FILE") as err:
            SchedulerConfig(scheduler_tariff_file=str(path))
        assert rule in str(err.value)
