"""Online calibration: scaled cost model and the least-squares factors from measured actions."""

from __future__ import annotations

import pytest

from dip.data.meta import work_for
from dip.runtime import planning
from dip.runtime.calibrate import OnlineCalibration, ScaledCostModel, _fit, busy_times
from dip.runtime.executor import ActionTime
from dip.schedule.ir import Action
from dip.spec.presets import get_model


@pytest.fixture(scope="module")
def setup():
    model = planning.with_parallel(get_model("tiny-vlm"), 2, 1)
    cm, hw = planning.cost_setup(model, "float32")
    batches = planning.make_step_batches(model, 1, 1, 4, 0)[0]
    work, sims = planning.plan_step(0, "1f1b", model, batches, cm, hw)
    return model, cm, hw, work, sims


def test_scaled_cost_model_multiplies_forward_and_backward_separately(setup):
    model, cm, _, work, _ = setup
    mb = work.batches[0].microbatches[0]
    llm = model.module("llm")
    w = work_for(model, llm, mb)
    scaled = ScaledCostModel(cm, {("llm", "f"): 2.0, ("llm", "b"): 3.0})
    a, b = cm.chunk_costs(llm, w, 0, 4), scaled.chunk_costs(llm, w, 0, 4)
    assert b.f == pytest.approx(2 * a.f) and b.i == pytest.approx(3 * a.i) and b.w == pytest.approx(3 * a.w)
    assert (
        scaled.layer_times("vit", work_for(model, model.module("vit"), mb)).f
        == cm.layer_times("vit", work_for(model, model.module("vit"), mb)).f
    )


def test_fit_separates_modules_of_mixed_chunks():
    obs = [({"vit": 1.0, "llm": 1.0}, 5.0), ({"llm": 2.0}, 6.0), ({"vit": 2.0, "llm": 1.0}, 7.0)]
    k = _fit(obs)
    assert k["llm"] == pytest.approx(3.0) and k["vit"] == pytest.approx(2.0)


def test_busy_time_runs_to_the_next_compute_action_minus_waits():
    rows = [
        ActionTime(Action.parse(a), s, e, w)
        for a, s, e, w in (("0F0", 0.0, 1.0, 0.2), ("0SEND_F0:1.0", 1.0, 1.5, 0.0), ("0B0", 1.5, 3.0, 0.5))
    ]
    assert busy_times(rows) == [(Action.parse("0F0"), pytest.approx(1.3)), (Action.parse("0B0"), pytest.approx(1.0))]


def test_calibration_recovers_a_uniform_slowdown(setup):
    _model, cm, _, work, sims = setup
    plan, batch = work.plans[0], work.batches[0]
    cal = OnlineCalibration(cm)
    rows = {}
    for r, acts in sims[0].result.action_times().items():
        t, rows[r] = 0.0, []
        for a, s, e in acts:  # back to back, every action three times slower than simulated
            rows[r].append(ActionTime(a, t, t + 3 * (e - s)))
            t += 3 * (e - s)
    cal.update(plan, batch, [rows[r] for r in sorted(rows)])
    assert set(cal.factors) == {("vit", "f"), ("vit", "b"), ("llm", "f"), ("llm", "b")}
    assert all(k == pytest.approx(3.0, rel=1e-6) for k in cal.factors.values()), cal.factors
    assert isinstance(cal.cost_model(), ScaledCostModel)


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_runtime_factors_are_measured_per_module_kind_and_pass(tmp_path):
    from dip.cli.main import main
    from dip.spec.hardware import get_hardware

    out = tmp_path / "cpu-rt.json"
    assert (
        main(
            [
                "profile",
                "--base",
                "cpu",
                "--runtime-models",
                "tiny-vlm",
                "--runtime-steps",
                "2",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    hw = get_hardware(str(out))
    assert set(hw.runtime_factors) == {"vit", "decoder"}
    assert all(set(p) == {"f", "b"} and all(0.05 < v < 20 for v in p.values()) for p in hw.runtime_factors.values())
    assert set(hw.action_overhead_s) == {"f", "b"} and all(v >= 0 for v in hw.action_overhead_s.values())
    assert hw.peak_flops == get_hardware("cpu").peak_flops  # the block fit is kept
