"""Gantt / memory plots and Perfetto traces of simulated (and measured) plans."""
from dip.viz.gantt import write_gantt_png
from dip.viz.trace import trace_events, write_chrome_trace

__all__ = ["trace_events", "write_chrome_trace", "write_gantt_png"]
