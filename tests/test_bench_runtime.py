"""``dip bench runtime`` part (a) plumbing on a tiny stack (no assertion on time)."""

from __future__ import annotations

from dip.bench.runtime import executor_vs_torch
from dip.bench.static_stack import StackShape


def test_executor_vs_torch_reports_both_engines_and_the_noise_floor():
    got = executor_vs_torch(4, StackShape(layers=2, hidden=8, heads=2, tokens=4, microbatches=4), timeout_s=60)
    assert got["same_gradients"]  # both engines computed the same gradients on the same blocks
    for key in (
        "torch_step_time_ratio",
        "torch_step_time_ratio_median_of_rounds",
        "executor_self_ratio",
        "executor_self_ratio_median_of_rounds",
        "executor_step_s",
        "torch_pipelining_step_s",
    ):
        assert got[key] > 0, key
    assert got["repeats"] == 4
    assert got["executor_process_cpu_ms"] > 0 and got["torch_process_cpu_ms"] > 0  # every thread of the rank
    if got["executor_main_thread_cpu_ms"] is not None:  # per-thread counters (Linux)
        assert got["executor_main_thread_cpu_ms"] > 0 and got["torch_main_thread_cpu_ms"] > 0
        assert got["executor_preemptions_per_step"] >= 0 and got["torch_preemptions_per_step"] >= 0
