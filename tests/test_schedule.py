"""Learning-rate schedules (model/schedule.py) and the end-of-training statement, without training."""
import math

import pytest

from so3krates.model.schedule import WARMUP_FRACTION, BudgetSchedule, PlateauSchedule
from so3krates.model.train import TrainOptions, convergence_statement


def lrs_by_steps(schedule, steps):
    out = []
    for _ in range(steps):
        out.append(schedule.lr())
        schedule.steps += 1
    return out


@pytest.mark.parametrize("kind", ["cosine", "exponential"])
def test_planned_schedule_reaches_the_floor_at_the_last_step(kind):
    lrs = lrs_by_steps(BudgetSchedule(kind, 2e-3, 1e-5, warmup_steps=10, total_steps=500, total_seconds=None), 500)
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-12)
    assert lrs[0] == pytest.approx(2e-3 / 10, rel=1e-3)            # warm-up starts low ...
    peak = max(range(500), key=lambda k: lrs[k])
    assert peak == 9 and lrs[peak] == pytest.approx(2e-3, rel=0.1)    # ... and ends after 10 steps
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))    # then only decays
    if kind == "cosine":
        assert lrs[250] == pytest.approx(1e-5 + (2e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 250 / 499)))
    else:
        assert lrs[250] == pytest.approx(2e-3 * (1e-5 / 2e-3) ** (250 / 499))


@pytest.mark.parametrize("kind", ["cosine", "exponential"])
def test_decay_fraction_holds_the_peak_then_decays_over_the_last_part_to_the_floor(kind):
    lrs = lrs_by_steps(BudgetSchedule(kind, 2e-3, 1e-5, 10, 501, None, decay_fraction=0.25), 501)
    assert all(lr == pytest.approx(2e-3) for lr in lrs[10:376])      # warm-up, then the peak until p = 0.75
    assert all(a > b for a, b in zip(lrs[375:], lrs[376:]))           # then only decays ...
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-12)                  # ... to the floor at the last step
    whole = BudgetSchedule(kind, 2e-3, 1e-5, 10, 126, None)           # its last 126 steps: the curve of a
    whole.steps = 50                                                   # 126-step run that decays throughout
    assert lrs[375 + 50] == pytest.approx(whole.lr())
    resumed = BudgetSchedule(kind, 2e-3, 1e-5, 10, 501, None)         # a resume keeps the stored fraction
    resumed.load_state_dict(BudgetSchedule(kind, 2e-3, 1e-5, 10, 501, None, 0.25).state_dict())
    assert resumed.decay_fraction == 0.25 and "decayed over the last 25%" in resumed.describe()
    with pytest.raises(ValueError, match="--decay-fraction must lie in"):
        TrainOptions(train="x", epochs=1, decay_fraction=0.0).validate()


def test_short_budget_does_not_end_in_warm_up_and_time_budget_ends_at_the_floor():
    # 40 planned steps with --warmup-steps 200: warm-up ends at 5 % of the budget.
    lrs = lrs_by_steps(BudgetSchedule("cosine", 1e-3, 1e-6, 200, 40, None), 40)
    end = math.ceil(WARMUP_FRACTION * 39)
    assert max(lrs) > 0.95e-3 and lrs.index(max(lrs)) == end and lrs[-1] == pytest.approx(1e-6)
    by_time = BudgetSchedule("cosine", 1e-3, 1e-6, 200, None, 600.0)
    assert by_time.lr(0.0) < 1e-4 and by_time.lr(300.0) == pytest.approx(0.5 * (1e-3 + 1e-6), rel=1e-3)
    assert by_time.lr(600.0) == pytest.approx(1e-6) and by_time.lr(900.0) == pytest.approx(1e-6)
    # Both budgets: the plan ends with whichever ends first.
    both = BudgetSchedule("cosine", 1e-3, 1e-6, 0, 1000, 600.0)
    assert both.lr(600.0) == pytest.approx(1e-6)


def test_resumed_plan_is_kept_and_a_new_budget_replans():
    a = BudgetSchedule("cosine", 1e-3, 1e-6, 5, 100, None)
    lrs_by_steps(a, 40)
    b = BudgetSchedule("cosine", 1e-3, 1e-6, 5, 300, None)   # options of a resumed run with --epochs raised
    b.load_state_dict(a.state_dict())
    assert b.plan() == (100, None) and b.lr() == a.lr()
    assert not b.replan(100, None)
    assert b.replan(300, None) and b.lr() > a.lr()


def test_open_ended_run_decays_on_plateau():
    s = PlateauSchedule(1e-3, warmup=0, patience=2, factor=0.5, min_lr=1e-5)
    for loss in (1.0, 0.9, 0.8):
        s.epoch_end(loss)
    assert s.lr() == pytest.approx(1e-3)
    for _ in range(3):   # patience 2: the third epoch without improvement halves the lr
        s.epoch_end(0.85)
    assert s.lr() == pytest.approx(5e-4)
    assert "plateau" in s.describe()


def test_options_refuse_an_unknown_schedule_and_a_missing_device():
    with pytest.raises(ValueError, match="--schedule 'linear'; choose one of cosine, exponential, plateau"):
        TrainOptions(train="x", epochs=1, schedule="linear").validate()
    with pytest.raises(ValueError, match="--device 'gpu'; choose cpu, cuda or cuda:N"):
        TrainOptions(train="x", epochs=1, device="gpu").validate()


def test_not_converged_statement():
    rows = [{"valid_forces_mae_meV_per_A": 100.0 / (k + 1), "valid_loss": 1.0} for k in range(20)]
    text = convergence_statement(rows)
    assert text.startswith("not converged") and "last 2 of 20 epochs" in text
    flat = [{"valid_forces_mae_meV_per_A": 10.0 - 0.001 * k, "valid_loss": 1.0} for k in range(20)]
    assert convergence_statement(flat) is None
    assert convergence_statement(rows[:5]) is None   # too few epochs to judge
