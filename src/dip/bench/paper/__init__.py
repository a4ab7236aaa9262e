"""``dip bench paper``: every figure and table of the paper, side by side with this repository's numbers.

One module per experiment (``table1``, ``e2e``, ``dynamic``, ``ablation``, ``submb``, ``memory``,
``search``, ``scalability``, ``accuracy``, ``xl``), each ``run(ctx) -> Experiment`` drawing its own
figure; :mod:`.reference` holds the paper's numbers, :mod:`.explain` the reasons the report gives for
differences, :mod:`.report` writes results.json and REPORT.md and :mod:`.suite` runs them all.
"""
