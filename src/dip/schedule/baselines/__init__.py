"""Baseline schedules as plan generators through the one plan IR (see :mod:`.registry`).

Owns the order generators and plan builders of the paper's baselines and the textbook schedules;
imports only ``dip.schedule`` and the layers below it (their memory strategy is chosen by simulation
in :mod:`dip.sim.plans`)."""

from dip.schedule.baselines.registry import SCHEDULES, Schedule, build_uniform_plan, get_generator

__all__ = ["SCHEDULES", "Schedule", "build_uniform_plan", "get_generator"]
