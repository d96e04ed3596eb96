"""The simulator (preemption keeps work, figures by hand), peak shaving, and the replay CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from pocgrid.cli.main import main
from pocgrid.sched import Demand, PendingCode, Pool, make_policy
from pocgrid.sched.shaping import Shaped
from pocgrid.sched.sim import RESULT_KEYS, Simulator
from pocgrid.sched.trace import read_trace
from pocgrid.tariff import LoadCap, Period, TimeOfUse, parse_tariff

EPOCH = datetime(2023, 1, 2, tzinfo=UTC)
H = 3600.0


def one_device() -> Pool:
    pool = Pool()
    pool.add_node("n", "c", 1, 64.0)
    return pool


def test_preempted_job_resumes_with_its_earlier_work_kept() -> None:
    # batch: 100 s of work from t=0, preemptible; urgent arrives at t=40 with 10 s of work
    batch = Demand("batch", "a", work=100.0, preemptible=True, submitted_at=0.0)
    urgent = Demand("urgent", "b", work=10.0, priority=5, submitted_at=40.0)
    sim = Simulator(one_device(), make_policy("fifo"), [batch, urgent], prices={"c": 3600.0})
    r = sim.run()
    b, u = r.records["batch"], r.records["urgent"]
    assert u.started == 40.0 and u.finished == 50.0
    # 40 s done before the stop; the other 60 s after urgent: finishes at 110, not 150
    assert b.preemptions == 1 and b.finished == pytest.approx(110.0)
    assert b.work_done == pytest.approx(100.0)
    assert r.completed == 2 and r.preemptions == 1
    assert r.avg_jct_s == pytest.approx((110.0 + 10.0) / 2)
    assert r.avg_wait_s == 0.0
    assert r.makespan_s == pytest.approx(110.0)
    assert r.utilization == pytest.approx(1.0)
    assert r.cost == pytest.approx(110.0)  # 110 device-seconds at 1 per device-second


def test_speed_sets_the_run_time_and_a_fraction_counts_its_share() -> None:
    pool = Pool()
    pool.add_node("n", "c", 2, 64.0)
    jobs = [
        Demand("fast", "a", work=100.0, speed={"c": 2.0}),
        Demand("half", "a", work=100.0, share_milli=500),
    ]
    r = Simulator(pool, make_policy("fifo"), jobs).run()
    assert r.records["fast"].finished == pytest.approx(50.0)
    assert r.records["half"].finished == pytest.approx(100.0)
    # busy: 50 device-s + 0.5 x 100 = 100 of 2 devices x 100 s
    assert r.utilization == pytest.approx(0.5)


TOU = TimeOfUse(
    {0: Period.VALLEY, 8: Period.PEAK, 20: Period.FLAT},
    {Period.VALLEY: Decimal("0.5"), Period.PEAK: Decimal("2"), Period.FLAT: Decimal(1)},
)


CLOSED_BY_DAY = LoadCap({Period.PEAK: 0, Period.FLAT: 0, Period.VALLEY: 2})


def test_shaping_defers_to_the_valley_under_the_cap_and_keeps_deadlines() -> None:
    pool = Pool()
    pool.add_node("n", "c", 4, 64.0)
    t0 = 9 * H  # peak hours
    flex = [
        Demand(f"f{i}", "a", work=H, deferrable=True, deadline=t0 + 30 * H, submitted_at=t0)
        for i in range(3)
    ]
    tight = Demand("tight", "a", work=H, deferrable=True, deadline=t0 + 2 * H, submitted_at=t0)
    firm = Demand("firm", "a", work=H, submitted_at=t0)
    jobs = [*flex, tight, firm]
    dec = Shaped(make_policy("fifo"), TOU, CLOSED_BY_DAY, epoch=EPOCH).schedule(jobs, pool, t0)
    assert [p.job_id for p in dec.placements] == ["firm"]  # firm work is never held
    assert dec.pending["f0"].code is PendingCode.DEFERRED
    assert "load cap of 0 busy devices" in dec.pending["f0"].message
    policy = Shaped(make_policy("fifo"), TOU, CLOSED_BY_DAY, epoch=EPOCH)
    fresh = Pool()
    fresh.add_node("n", "c", 4, 64.0)
    r = Simulator(fresh, policy, jobs, tariff=TOU).run()
    # tight must start by 11 h - 1.25 x 1 h: held in the peak until exactly then, in time
    assert r.records["tight"].started == 9.75 * H
    assert r.records["tight"].finished == 10.75 * H
    starts = sorted(r.records[f"f{i}"].started or 0.0 for i in range(3))
    # valley opens at 24 h; its cap of 2 busy lets two start, the third once they finish
    assert starts == [24 * H, 24 * H, 25 * H]
    assert max(r.hourly_load[11:24]) == 0.0 and max(r.hourly_load[24:]) <= 2.0
    assert r.deadline_misses == 0


def test_shaping_starts_held_work_when_its_deadline_cannot_wait() -> None:
    pool = one_device()
    t0 = 9 * H
    d = Demand("d", "a", work=4 * H, deferrable=True, deadline=t0 + 10 * H, submitted_at=t0)
    policy = Shaped(make_policy("fifo"), TOU, CLOSED_BY_DAY, epoch=EPOCH)
    assert policy.schedule([d], pool, t0).placements == ()  # latest start: 19 h - 5 h
    r = Simulator(one_device(), policy, [d], tariff=TOU).run()
    rec = r.records["d"]
    assert rec.started == 14 * H and rec.finished == 18 * H  # in the peak, over the cap
    assert r.deadline_misses == 0


def test_cap_counts_the_hours_a_job_would_run() -> None:
    # a 3 h job may not start in the valley's last hour: it would run into a closed period
    pool = one_device()
    t = 7 * H  # 07:00, valley until 08:00
    d = Demand("d", "a", work=3 * H, deferrable=True, deadline=t + 48 * H, submitted_at=t)
    dec = Shaped(make_policy("fifo"), TOU, CLOSED_BY_DAY, epoch=EPOCH).schedule([d], pool, t)
    assert dec.placements == ()
    assert "2023-01-02T08:00" in dec.pending["d"].message
    ok = Demand("ok", "a", work=H, deferrable=True, deadline=t + 48 * H, submitted_at=t)
    dec = Shaped(make_policy("fifo"), TOU, CLOSED_BY_DAY, epoch=EPOCH).schedule([ok], pool, t)
    assert [p.job_id for p in dec.placements] == ["ok"]


def test_tariff_file_errors_name_the_field() -> None:
    ok = parse_tariff(
        '{"hours": {"0": "valley", "8": "peak"}, "multipliers": {"valley": "0.5", "peak": 2},'
        ' "cap_devices": {"peak": 3}, "utc_offset_hours": 8}'
    )
    assert ok.cap.devices == {Period.PEAK: 3.0}
    assert ok.time_of_use.period(datetime(2023, 1, 1, 1, tzinfo=UTC)) is Period.PEAK  # 09:00
    for text, field in [
        ('{"hours": {"25": "peak"}, "multipliers": {"peak": 1}}', "0..23"),
        ('{"hours": {"0": "noon"}, "multipliers": {}}', "tariff.hours.0"),
        (
            '{"hours": {"0": "peak"}, "multipliers": {"peak": 1}, "cap_devices": {"peak": -1}}',
            "tariff.cap_devices.peak",
        ),
        ('{"hours": {"0": "peak"}, "multipliers": {"peak": 1}, "extra": 1}', "unknown field"),
        ("[1]", "must be a JSON object"),
    ]:
        with pytest.raises(ValueError, match=field):
            parse_tariff(text)


NODES = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,96000,786432,8,G2\n"
PODS = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
    "deletion_time,scheduled_time\n"
    "p0,1000,1024,1,500,,LS,Running,0,100,0\n"
    "p1,1000,1024,8,1000,,BE,Failed,10,1010,10\n"
    "p2,1000,1024,0,0,,LS,Running,0,50,0\n"
    "p3,1000,1024,1,1000,P100,Burstable,Pending,20,80,\n"
)


def write_trace(tmp_path: Path) -> tuple[Path, Path]:
    pods, nodes = tmp_path / "pods.csv", tmp_path / "nodes.csv"
    pods.write_text(PODS)
    nodes.write_text(NODES)
    return pods, nodes


def test_trace_mapping(tmp_path: Path) -> None:
    pods, nodes = write_trace(tmp_path)
    t = read_trace(pods, nodes)
    assert t.skipped_cpu_only == 1
    assert set(t.pool.chips) == {"kunlun-r200", "ascend-910b2"}
    by_id = {d.job_id: d for d in t.demands}
    assert by_id["p0"].share_milli == 500 and by_id["p0"].work == 100.0
    p1 = by_id["p1"]
    assert p1.devices == 8 and p1.single_node and p1.preemptible and p1.deferrable
    assert p1.deadline == 10 + 1000 + 86_400
    assert p1.speed_on("ascend-910b2") == pytest.approx(1.0)  # the reference chip
    assert p1.speed_on("kunlun-r200") < 1.0
    assert by_id["p3"].chips == {"kunlun-r200"} and by_id["p3"].work == 60.0


def test_replay_json_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pods, nodes = write_trace(tmp_path)
    for policy in ("fifo", "binpack", "spread", "hetero", "cost"):
        rc = main(
            [
                "sched",
                "replay",
                "--trace",
                str(pods),
                "--nodes",
                str(nodes),
                "--policy",
                policy,
                "--json",
            ]
        )
        out = json.loads(capsys.readouterr().out)
        assert rc == 0
        assert tuple(out) == RESULT_KEYS
        assert out["jobs"] == 3 and out["completed"] == 3


def test_replay_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pods, nodes = write_trace(tmp_path)
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,K80\n")
    rc = main(["sched", "replay", "--trace", str(pods), "--nodes", str(nodes), "--policy", "fifo"])
    assert rc == 2
    assert "GPU model 'K80' has no catalogue chip mapped" in capsys.readouterr().err


def test_a_cap_in_watts_counts_each_devices_power() -> None:
    pool = Pool()
    pool.add_node("hot", "hot-chip", 2, 64.0)
    pool.add_node("cool", "cool-chip", 2, 64.0)
    cap = LoadCap({}, {Period.PEAK: 500.0})
    power = {"hot-chip": 400.0, "cool-chip": 100.0}
    t0 = 9 * H  # peak
    firm = Demand("firm", "a", work=H, chips=frozenset({"hot-chip"}), submitted_at=t0)
    shaped = Shaped(make_policy("fifo"), TOU, cap, epoch=EPOCH, power=power)
    assert [p.job_id for p in shaped.schedule([firm], pool, t0).placements] == ["firm"]

    def held(name: str, chips: set[str]) -> Demand:
        return Demand(
            name,
            "a",
            work=H,
            chips=frozenset(chips),
            deferrable=True,
            deadline=t0 + 30 * H,
            submitted_at=t0,
        )

    # 400 W run; another hot device would make 800 W, a cool one 500 W: at the cap, allowed.
    dec = shaped.schedule([held("hot", {"hot-chip"}), held("cool", {"cool-chip"})], pool, t0)
    assert [p.job_id for p in dec.placements] == ["cool"]
    assert "load cap of 500 W of busy devices" in dec.pending["hot"].message
    # Not placed yet, a job that may get either chip type counts at the hungrier one.
    either = held("either", {"hot-chip", "cool-chip"})
    assert shaped.schedule([either], pool, t0).placements == ()
    # The device count alone would have let both in.
    loose = Shaped(make_policy("fifo"), TOU, LoadCap({Period.PEAK: 4}), epoch=EPOCH)
    assert len(loose.schedule([held("h2", {"hot-chip"})], pool, t0).placements) == 1
    with pytest.raises(ValueError, match="power"):
        Shaped(make_policy("fifo"), TOU, cap, epoch=EPOCH)
    assert parse_tariff(
        '{"hours": {"0": "peak"}, "multipliers": {"peak": 1}, "cap_watts": {"peak": 9000}}'
    ).cap.watts == {Period.PEAK: 9000.0}
    with pytest.raises(ValueError, match=r"tariff\.cap_watts\.peak: must be a number >= 0"):
        parse_tariff(
            '{"hours": {"0": "peak"}, "multipliers": {"peak": 1}, "cap_watts": {"peak": -1}}'
        )
