"""Baseline schedules as plan generators through the one plan IR (see :mod:`.registry`)."""
from dip.schedule.baselines.registry import (
    SCHEDULES,
    Schedule,
    build_baseline_plan,
    build_uniform_plan,
    get_generator,
    schedule_names,
    simulate_schedule,
)

__all__ = ["SCHEDULES", "Schedule", "build_baseline_plan", "build_uniform_plan", "get_generator",
           "schedule_names", "simulate_schedule"]
