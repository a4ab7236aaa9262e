"""The plan IR and everything that is true of a plan without timing it: stage graph, units and
flows, actions and their text form, dependencies and message keys (``deps``), lowering to programs
with SEND/RECV (``lowering``, ``program``, ``recv_ahead``), the validator, the shape plan, layer
partitions and the baseline schedules, torch export.

Imports ``dip.cost``, ``dip.data``, ``dip.spec`` and below; never torch at module level (the torch
export imports it inside the function that needs it)."""
