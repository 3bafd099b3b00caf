"""Learning-rate schedules: an optimizer's ``lr`` may be one of these, or any callable of
the step number.

A schedule maps the number of steps taken so far (0 for the first step, as Keras's
``iterations`` and a torch scheduler's ``last_epoch``) to the rate of the next step.
The optimizer calls it once a step, on the host, checks the rate (finite, >= 0) before
any weight changes, and hands it to the update through a one-element float64 array (a
device scalar on the GPU, written before each step or CUDA-graph replay).
"""
import math

from .validation import check_count, check_real, is_real


class Schedule:
    """Base class: ``schedule(step) -> rate``; ``get_config()`` rebuilds it (model files)."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _rate(name, value, owner):
    return check_real(name, value, 0.0, lo_open=True, owner=owner)


class StepDecay(Schedule):
    """``initial_lr * gamma ** (step // step_size)``: torch.optim.lr_scheduler.StepLR, counted in
    optimizer steps."""

    def __init__(self, initial_lr, step_size, gamma=0.1):
        self.initial_lr = _rate("initial_lr", initial_lr, "StepDecay")
        self.step_size = check_count("step_size", step_size, 1, "StepDecay")
        self.gamma = check_real("gamma", gamma, 0.0, owner="StepDecay")

    def __call__(self, step):
        return self.initial_lr * self.gamma ** (step // self.step_size)

    def get_config(self):
        return {"initial_lr": self.initial_lr, "step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """Keras's: ``initial_learning_rate * decay_rate ** (step / decay_steps)`` (the exponent
    floored with ``staircase=True``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        self.initial_learning_rate = _rate("initial_learning_rate", initial_learning_rate, "ExponentialDecay")
        self.decay_steps = check_count("decay_steps", decay_steps, 1, "ExponentialDecay")
        self.decay_rate = check_real("decay_rate", decay_rate, 0.0, lo_open=True, owner="ExponentialDecay")
        if not isinstance(staircase, bool):
            raise TypeError(f"ExponentialDecay: expected staircase to be a bool, got {staircase!r}")
        self.staircase = staircase

    def __call__(self, step):
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(p) if self.staircase else p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase}


class CosineDecay(Schedule):
    """Keras's CosineDecay: with ``warmup_steps``, linear from ``initial_learning_rate`` to
    ``warmup_target`` over those steps, then a half cosine from there down to
    ``alpha * warmup_target`` over ``decay_steps`` steps, then flat. Without warmup it decays
    from ``initial_learning_rate``. (Keras skips the warmup when ``warmup_target`` is None;
    here warmup_steps without warmup_target is an error instead of a silent no-op.)"""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = check_real("initial_learning_rate", initial_learning_rate, 0.0, owner=owner)
        self.decay_steps = check_count("decay_steps", decay_steps, 1, owner)
        self.alpha = check_real("alpha", alpha, 0.0, 1.0, owner=owner)
        self.warmup_steps = check_count("warmup_steps", warmup_steps, 0, owner)
        if warmup_target is not None:
            warmup_target = _rate("warmup_target", warmup_target, owner)
        elif self.warmup_steps:
            raise ValueError(f"CosineDecay: expected warmup_target (the rate the warmup rises to) with "
                             f"warmup_steps={self.warmup_steps}, got None")
        self.warmup_target = warmup_target

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return (self.warmup_target - self.initial_learning_rate) * frac + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def _decay(self, step, start):
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return start * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class OneCycle(Schedule):
    """torch.optim.lr_scheduler.OneCycleLR's rate (two phases): from ``max_lr / div_factor`` up
    to ``max_lr`` over the first ``pct_start`` of ``total_steps``, then down to
    ``max_lr / div_factor / final_div_factor``, annealed by cosine (or linearly). Only the
    rate: torch's cycle_momentum also moves the momentum / betas, which this does not.
    A step past total_steps is an error, as in torch."""

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos", div_factor=25.0,
                 final_div_factor=1e4):
        owner = "OneCycle"
        self.max_lr = _rate("max_lr", max_lr, owner)
        self.total_steps = check_count("total_steps", total_steps, 2, owner)
        self.pct_start = check_real("pct_start", pct_start, 0.0, 1.0, lo_open=True, hi_open=True, owner=owner)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycle: expected anneal_strategy 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _rate("div_factor", div_factor, owner)
        self.final_div_factor = _rate("final_div_factor", final_div_factor, owner)
        initial = self.max_lr / self.div_factor
        # (end step, start rate, end rate) of each phase, as torch lays them out
        self._phases = ((float(self.pct_start * self.total_steps) - 1, initial, self.max_lr),
                        (self.total_steps - 1, self.max_lr, initial / self.final_div_factor))

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "linear":
            return (end - start) * pct + start
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def __call__(self, step):
        if step >= self.total_steps:
            raise ValueError(f"OneCycle: expected at most total_steps={self.total_steps} steps, got step "
                             f"{step + 1} (raise total_steps to epochs * steps per epoch)")
        start_step = 0.0
        for i, (end_step, lo, hi) in enumerate(self._phases):
            if step <= end_step or i == len(self._phases) - 1:
                return self._anneal(lo, hi, (step - start_step) / (end_step - start_step))
            start_step = end_step

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "anneal_strategy": self.anneal_strategy, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}


SCHEDULES = {k.__name__: k for k in (StepDecay, ExponentialDecay, CosineDecay, OneCycle)}


def schedule_rate(schedule, step, owner):
    """schedule(step) as a float, checked: a finite rate >= 0, else a ValueError naming the step."""
    try:
        rate = schedule(step)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{owner}: the learning-rate schedule {schedule!r} failed at step {step}: {e}") from e
    if not is_real(rate):
        raise TypeError(f"{owner}: expected the learning-rate schedule {schedule!r} to return a number at "
                        f"step {step}, got {type(rate).__name__}")
    rate = float(rate)
    if not (math.isfinite(rate) and rate >= 0.0):
        raise ValueError(f"{owner}: expected the learning-rate schedule {schedule!r} to return a finite rate "
                         f">= 0, got {rate!r} at step {step}; no weight was changed")
    return rate


def schedule_config(schedule, owner):
    """{"class", "config"} of a schedule of this module (what a model file keeps)."""
    if type(schedule).__name__ not in SCHEDULES or SCHEDULES[type(schedule).__name__] is not type(schedule):
        raise ValueError(f"{owner}: cannot save a learning rate given as {schedule!r}; expected a number or one "
                         f"of the schedules {sorted(SCHEDULES)} (a plain function cannot be written to a file)")
    return {"class": type(schedule).__name__, "config": schedule.get_config()}


def schedule_from_config(entry, owner):
    kind = SCHEDULES.get(entry.get("class"))
    if kind is None:
        raise ValueError(f"{owner}: expected a learning-rate schedule among {sorted(SCHEDULES)}, "
                         f"got {entry.get('class')!r}")
    return kind(**entry.get("config", {}))
