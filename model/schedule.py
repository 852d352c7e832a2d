"""Learning-rate schedules: planned over the run's budget, or decay on plateau.

`BudgetSchedule` (the default, `--schedule cosine` or `exponential`): a run with a budget
(--epochs and/or --max-time) knows when it ends, so the learning rate is a function of how much of
the budget is spent, p in [0, 1]: a linear warm-up, then a decay from the peak --lr that reaches
the floor --min-lr at p = 1 (the last step of a run planned by epochs; the end of --max-time).
With --decay-fraction f < 1 the lr stays at its peak until p = 1 - f and the decay takes the last
fraction f of the budget (warm-up, stable, decay: Hu et al. 2024, MiniCPM; Haegele et al. 2024).
With both budgets, p is the larger of the two fractions: the plan ends with whichever ends first.
The plan (steps and seconds) is made when the run starts and stored in the checkpoint, so a
resumed run with the same budget (an interrupted run, or one stopped by --max-time in the
middle) continues the same curve and ends with the same weights as an uninterrupted one. A resume
with another budget re-plans over the new one from where the run is (`replan`): the learning rate
follows the new curve, rising again if the old plan had already decayed it (a warm restart).

`PlateauSchedule` (`--schedule plateau`): warm-up over --warmup-steps, then the lr times
--plateau-factor after --plateau-patience epochs without a better validation loss; for runs whose
length is not known in advance (the recipe before budget planning).

State is plain numbers (checkpoint-safe, loadable with weights_only=True).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

SCHEDULES = ("cosine", "exponential", "plateau")
# Warm-up ends after --warmup-steps steps or this fraction of the budget, whichever comes first:
# a short budgeted run must not spend itself warming up.
WARMUP_FRACTION = 0.05


class PlateauSchedule:
    """Linear warm-up over `warmup` steps, then the lr times `factor` after `patience` epochs
    without a better validation loss."""

    kind = "plateau"

    def __init__(self, lr: float, warmup: int, patience: int, factor: float, min_lr: float):
        self.base, self.warmup, self.patience, self.factor, self.min_lr = lr, warmup, patience, factor, min_lr
        self.scale, self.best, self.bad_epochs, self.steps = 1.0, math.inf, 0, 0

    def warm(self, elapsed: float = 0.0) -> float:
        return min(1.0, (self.steps + 1) / max(self.warmup, 1))

    def lr(self, elapsed: float = 0.0) -> float:
        return max(self.base * self.scale, self.min_lr) * self.warm(elapsed)

    def epoch_end(self, valid_loss: float) -> None:
        if valid_loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = valid_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0

    def describe(self) -> str:
        return (f"plateau: warm-up over {self.warmup} steps, then lr x {self.factor:g} after {self.patience} epochs "
                f"without a better validation loss, floor {self.min_lr:g}; ends when the budget does")

    def state_dict(self) -> Dict[str, float]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs, "steps": self.steps}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.scale, self.best = float(state["scale"]), float(state["best"])
        self.bad_epochs, self.steps = int(state["bad_epochs"]), int(state["steps"])


class BudgetSchedule:
    """Warm-up, then cosine or exponential decay from `lr` to `min_lr` over the planned budget:
    `total_steps` optimizer steps and/or `total_seconds` of training (None: not planned by it)."""

    def __init__(self, kind: str, lr: float, min_lr: float, warmup_steps: int, total_steps: Optional[int],
                 total_seconds: Optional[float], decay_fraction: float = 1.0):
        if kind not in ("cosine", "exponential"):
            raise ValueError(f"schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
        if total_steps is None and total_seconds is None:
            raise ValueError("a budget schedule needs --epochs or --max-time to plan over")
        self.kind, self.base, self.min_lr, self.warmup_steps = kind, lr, min(min_lr, lr), warmup_steps
        if not 0.0 < decay_fraction <= 1.0:
            raise ValueError(f"--decay-fraction must lie in (0, 1], got {decay_fraction:g}")
        self.total_steps, self.total_seconds = total_steps, total_seconds
        self.decay_fraction = decay_fraction
        self.steps = 0

    def progress(self, elapsed: float) -> float:
        """The fraction of the budget spent before the next step, p in [0, 1]; the last planned
        step has p = 1."""
        p = 0.0
        if self.total_steps is not None:
            p = max(p, self.steps / max(self.total_steps - 1, 1))
        if self.total_seconds is not None:
            p = max(p, elapsed / self.total_seconds)
        return min(p, 1.0)

    def warm(self, elapsed: float) -> float:
        by_steps = (self.steps + 1) / max(self.warmup_steps, 1)
        by_budget = self.progress(elapsed) / WARMUP_FRACTION
        return min(1.0, max(by_steps, by_budget))

    def decayed(self, p: float) -> float:
        f = self.decay_fraction
        p = min(max((p - (1.0 - f)) / f, 0.0), 1.0)   # the decay's own progress: 0 until 1 - f, 1 at the end
        if self.kind == "cosine":
            return self.min_lr + (self.base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
        return self.base * (self.min_lr / self.base) ** p   # exponential: a straight line in log(lr)

    def lr(self, elapsed: float = 0.0) -> float:
        p = self.progress(elapsed)
        return self.decayed(p) * self.warm(elapsed)

    def epoch_end(self, valid_loss: float) -> None:
        """The plan does not depend on the validation loss."""

    def describe(self) -> str:
        ends = []
        if self.total_steps is not None:
            ends.append(f"step {self.total_steps}")
        if self.total_seconds is not None:
            ends.append(f"{self.total_seconds:.0f} s of training")
        warm = f"{self.warmup_steps} steps or {WARMUP_FRACTION:.0%} of the budget, whichever is first"
        first = " (whichever comes first)" if len(ends) > 1 else ""
        hold = "" if self.decay_fraction == 1.0 else (f", held until {1.0 - self.decay_fraction:.0%} of the budget "
                                                      f"and decayed over the last {self.decay_fraction:.0%}")
        return (f"{self.kind} decay planned over the budget: warm-up over {warm}, then {self.base:g}{hold} down to "
                f"the floor {self.min_lr:g}, reached at {' or '.join(ends)}{first}")

    def state_dict(self) -> Dict[str, float]:
        return {"kind": self.kind, "steps": self.steps, "total_steps": self.total_steps,
                "total_seconds": self.total_seconds, "decay_fraction": self.decay_fraction}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        """The stored plan replaces the one made from this run's options: a resumed run keeps it."""
        self.steps = int(state["steps"])
        self.total_steps = None if state.get("total_steps") is None else int(state["total_steps"])
        self.total_seconds = None if state.get("total_seconds") is None else float(state["total_seconds"])
        self.decay_fraction = float(state.get("decay_fraction", 1.0))   # runs before the option: decay throughout

    def plan(self):
        return self.total_steps, self.total_seconds

    def replan(self, total_steps: Optional[int], total_seconds: Optional[float]) -> bool:
        """Plan over another budget (a resume with a new --epochs / --max-time); whether it changed."""
        if (total_steps, total_seconds) == self.plan():
            return False
        self.total_steps, self.total_seconds = total_steps, total_seconds
        return True


def make_schedule(kind: str, lr: float, min_lr: float, warmup_steps: int, patience: int, factor: float,
                  total_steps: Optional[int], total_seconds: Optional[float], decay_fraction: float = 1.0):
    if kind == "plateau":
        return PlateauSchedule(lr, warmup_steps, patience, factor, min_lr)
    return BudgetSchedule(kind, lr, min_lr, warmup_steps, total_steps, total_seconds, decay_fraction)
