"""Gantt / memory plots, Perfetto traces and the interactive HTML viewer of simulated (and measured) plans.

Imports ``dip.sim`` and below (matplotlib only inside the Gantt writer)."""

from dip.viz.gantt import write_gantt_png
from dip.viz.html import build_viewer
from dip.viz.trace import trace_events, write_chrome_trace

__all__ = ["build_viewer", "trace_events", "write_chrome_trace", "write_gantt_png"]
