"""Benchmarks that print ratios measured side by side (``dip bench sim|planner|runtime|paper``).

* :mod:`.sim`: simulator throughput (numba kernel vs the Python reference);
* :mod:`.planner`: DIP's plans against its lower bound, the exact optimum and the baselines;
* :mod:`.runtime`: measured steps of DIP and of ``torch.distributed.pipelining`` on the same model
  and batches, with the noise floor (the same engine run twice);
* :mod:`.paper`: every figure and table of the paper's evaluation, with a report next to its numbers;
* :mod:`.compare`: several schedules measured side by side on the same batches, step by step;
* :mod:`.static_stack`: a static-shape stack of decoder blocks that both our executor and torch
  pipelining run (the like-for-like runtime comparison);
* :mod:`.calibration`: the runtime factors and per-action overheads of a calibration file, fitted
  from real steps (``dip profile --runtime``).

The top layer beside ``dip.cli``: imports every package below it. Benchmarks never assert on time;
tests check their structure, not their numbers.
"""
