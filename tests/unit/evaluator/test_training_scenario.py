"""The hybrid-training scenario as data, its validation, and how its result is shown."""

from __future__ import annotations

import pytest

from pocgrid.catalog import default_catalog
from pocgrid.cli.evaluate import _print
from pocgrid.comm.launch import RankSpec
from pocgrid.evaluation import evaluation_to_dict
from pocgrid.v1 import evaluator_pb2
from services.evaluator import training
from services.evaluator.scenarios import ScenarioError, check_pack, check_scenario, load_catalog


@pytest.fixture(scope="module")
def scenario() -> evaluator_pb2.Scenario:
    found = load_catalog(default_catalog()).get("hybrid-training")
    assert found is not None
    return found


def test_hybrid_training_is_a_built_in_training_scenario(scenario) -> None:
    assert scenario.kind == "training" and not scenario.models
    cfg = training.config_of(scenario.training, seed=4)
    assert cfg.batch <= cfg.samples and cfg.seed == 4
    assert training.model_name(scenario.training) == "mlp-64-512-10"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s.training.__setattr__("batch", s.training.samples + 1), "training.batch"),
        (lambda s: s.training.__setattr__("steps", 0), "training.steps"),
        (lambda s: s.training.__setattr__("lr", -1.0), "training.lr"),
        (lambda s: s.training.__setattr__("classes", 1), "training.classes"),
        (lambda s: s.models.append("Qwen2.5-7B"), "models"),
        (lambda s: s.ClearField("training"), "training"),
        (lambda s: s.__setattr__("default_mode", 1), "kind"),
    ],
)
def test_a_bad_training_scenario_names_the_field(scenario, change, field) -> None:
    bad = evaluator_pb2.Scenario()
    bad.CopyFrom(scenario)
    change(bad)
    with pytest.raises(ScenarioError) as err:
        check_scenario(bad, default_catalog(), "s")
    assert err.value.field == f"s.{field}"


def test_a_pack_cannot_mix_in_training(scenario) -> None:
    pack = evaluator_pb2.Scenario(name="p", title="P", kind="pack", field="finance")
    pack.components.add(scenario="hybrid-training", share=1.0)
    with pytest.raises(ScenarioError) as err:
        check_pack(pack, {"hybrid-training": scenario}, "p")
    assert err.value.field == "p.components[0].scenario"


def _value(step_prop: float, step_equal: float, diff: float) -> dict:
    def split(counts, step, compute):
        return {
            "counts": counts,
            "losses": [2.3, 2.1],
            "max_loss_diff": diff,
            "ranks_agree": True,
            "step": {
                "compute_s": compute,
                "allreduce_s": 1e-4,
                "step_s": step,
                "ideal_s": 2e-4,
                "algorithm": "ring",
                "efficiency": 2e-4 / step,
            },
            "precisions": ["bf16", "bf16"],
            "speeds": [3e7, 1e7],
        }

    return {
        "single_process_losses": [2.3, 2.1],
        "proportional": split([3, 1], step_prop, [step_prop - 1e-4] * 2),
        "equal": split([2, 2], step_equal, [step_equal - 1e-4, 1e-4]),
    }


def test_result_rows_verdict_and_cli_table(scenario, capsys) -> None:
    specs = [RankSpec("a100-80gb-sxm", 2), RankSpec("rtx-4090", 1)]
    result = training.training_result(_value(3e-4, 4e-4, 0.0), specs, scenario.training)
    assert result.proportional_speedup == pytest.approx(4 / 3)
    rows = [evaluator_pb2.ChipResult(chip=s.chip) for s in specs]
    training._fill_rows(rows, result)
    assert all(r.runnable and r.verdict == evaluator_pb2.VERDICT_VALID for r in rows)
    assert rows[0].request_throughput == 3e7
    e = evaluator_pb2.Evaluation(evaluation_id="ev-1", scenario_kind="training")
    e.request.scenario = "hybrid-training"
    e.results.extend(rows)
    e.training.CopyFrom(result)
    e.recommendation.CopyFrom(training.recommendation(result))
    assert "proportionally" in e.recommendation.summary
    _print(evaluation_to_dict(e))
    out = capsys.readouterr().out
    assert "proportional  3/1" in out and "equal" in out
    assert "0.3000" in out and "0.4000" in out  # step ms per split
    assert "0.667" in out and "0.500" in out  # scaling efficiency per split
    # A loss that drifts from the single-process run's makes the result invalid.
    drift = training.training_result(_value(3e-4, 4e-4, 1e-3), specs, scenario.training)
    rows = [evaluator_pb2.ChipResult(chip=s.chip) for s in specs]
    training._fill_rows(rows, drift)
    assert all(r.verdict == evaluator_pb2.VERDICT_INVALID for r in rows)
