"""Self-contained interactive HTML viewer of dip traces (``dip viz``).

A trace written by ``dip plan/simulate/train --trace`` (see :mod:`dip.viz.trace`) becomes one HTML page
with everything inline (no network): per rank a timeline lane of compute bars (colour by module, shade
by pass) and a memory track, a time axis, zoom / pan and a hover tooltip. A ``dip train`` trace holds
the planned and the measured slices of the same step and shows both; a second trace given as
``measured`` is drawn next to the first (planned vs measured, or two plans side by side).

The page draws on a canvas and only the bars in view, so traces with 100k slices stay responsive. It
exposes ``document.body.dataset.bars`` (bars in the page), ``.visible`` (bars in the current view)
and ``.ready`` for tests.
"""

from __future__ import annotations

import html as html_escape
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from dip.errors import BadInput

__all__ = ["Bar", "Lane", "SeriesSummary", "TraceView", "ViewerPage", "build_viewer", "read_trace"]

US = 1e-6  # trace timestamps are microseconds
SLICE_ARGS = ("module", "op", "chunk", "unit", "mb")
_RANK_NAME = re.compile(r"^rank (\d+)(?: \((plan|measured)\))?$")
_TIME_DIGITS = 9  # seconds rounded to the nanosecond in the page
_MEM_DIGITS = 4  # GiB rounded to 0.1 MiB


@dataclass(frozen=True)
class Bar:
    """One compute slice: times in seconds from the step start."""

    start_s: float
    dur_s: float
    name: str
    module: str
    op: str
    chunk: int
    unit: int
    mb: int
    layers: str = ""
    act_bytes: float | None = None


@dataclass
class Lane:
    """The bars and memory counter of one rank in one series (``plan`` or ``measured``)."""

    rank: int
    series: str
    bars: list[Bar] = field(default_factory=list)
    memory: list[tuple[float, float]] = field(default_factory=list)  # (time s, GiB)


@dataclass
class TraceView:
    """What the viewer needs from one trace file: its lanes by ``(series, rank)`` and its ``otherData``."""

    source: str
    lanes: dict[tuple[str, int], Lane]
    meta: dict[str, Any]

    @property
    def ranks(self) -> int:
        return 1 + max((r for _, r in self.lanes), default=-1)

    @property
    def name(self) -> str:
        """The file name without its folder (for titles and labels)."""
        return os.path.basename(self.source) or self.source

    def series(self) -> list[str]:
        """Series present, ``plan`` before ``measured``."""
        return sorted({s for s, _ in self.lanes}, key=lambda s: (s != "plan", s))

    def lanes_of(self, series: str) -> list[Lane]:
        return [self.lanes[(s, r)] for s, r in sorted(self.lanes) if s == series]


@dataclass(frozen=True)
class SeriesSummary:
    name: str
    bars: int
    memory_points: int
    makespan_s: float


@dataclass(frozen=True)
class ViewerPage:
    """The rendered page and what it shows."""

    html: str
    ranks: int
    series: tuple[SeriesSummary, ...]

    @property
    def bars(self) -> int:
        return sum(s.bars for s in self.series)

    def summary(self) -> dict[str, Any]:
        return {
            "ranks": self.ranks,
            "bars": self.bars,
            "memory_points": sum(s.memory_points for s in self.series),
            "series": [
                {"name": s.name, "bars": s.bars, "memory_points": s.memory_points, "makespan_s": s.makespan_s}
                for s in self.series
            ],
        }


# -- reading a trace ------------------------------------------------------------------------------
def read_trace(doc: Any, *, source: str) -> TraceView:
    """Lanes of a dip trace document (the parsed JSON).

    Args:
        doc: the JSON object written by :func:`dip.viz.trace.write_chrome_trace`.
        source: the file name, used in error messages.

    Returns:
        The trace's lanes: one per rank (``plan``), two per rank for a ``dip train`` trace.

    Raises:
        BadInput: ``doc`` is not a dip trace (naming ``source`` and what is missing).
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise BadInput(
            f"{source} is not a dip trace: expected a JSON object with a 'traceEvents' list "
            f"(write one with dip plan/simulate/train --trace)"
        )
    meta = doc.get("otherData") if isinstance(doc.get("otherData"), dict) else {}
    events = [e for e in doc["traceEvents"] if isinstance(e, dict)]
    pid_lane = _lanes_by_pid(events, source)
    slices = [e for e in events if e.get("ph") == "X"]
    if meta.get("generator") != "dip" and not slices:
        raise BadInput(f"{source} is not a dip trace: it has no compute slices and no otherData.generator 'dip'")
    lanes = {(lane.series, lane.rank): lane for lane in pid_lane.values()}
    for k, e in enumerate(slices):
        lane = pid_lane.get(e.get("pid"))
        if lane is None:
            raise BadInput(
                f"{source} is not a dip trace: slice {k} is on process {e.get('pid')!r}, "
                f"which has no 'rank N' process_name"
            )
        lane.bars.append(_bar(e, k, source))
    for e in events:
        if e.get("ph") == "C" and e.get("name") == "memory" and e.get("pid") in pid_lane:
            gib = (e.get("args") or {}).get("GiB")
            if _is_number(gib) and _is_number(e.get("ts")):
                pid_lane[e["pid"]].memory.append((float(e["ts"]) * US, float(gib)))
    for lane in lanes.values():
        lane.bars.sort(key=lambda b: b.start_s)
        lane.memory.sort(key=lambda p: p[0])  # stable: same-time updates keep their order
    return TraceView(source=source, lanes=lanes, meta=dict(meta))


def _lanes_by_pid(events: list[dict], source: str) -> dict[Any, Lane]:
    lanes: dict[Any, Lane] = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            m = _RANK_NAME.match(str((e.get("args") or {}).get("name", "")))
            if m:
                lanes[e.get("pid")] = Lane(rank=int(m.group(1)), series=m.group(2) or "plan")
    if not lanes:
        raise BadInput(
            f"{source} is not a dip trace: no process is named 'rank N' "
            f"(write one with dip plan/simulate/train --trace)"
        )
    return lanes


def _bar(e: dict, k: int, source: str) -> Bar:
    args = e.get("args")
    if not isinstance(args, dict):
        raise BadInput(f"{source} is not a dip trace: slice {k} ({e.get('name')!r}) has no args")
    missing = [a for a in SLICE_ARGS if a not in args]
    if missing:
        raise BadInput(f"{source} is not a dip trace: slice {k} ({e.get('name')!r}) lacks args {', '.join(missing)}")
    if not (_is_number(e.get("ts")) and _is_number(e.get("dur"))):
        raise BadInput(f"{source}: slice {k} ({e.get('name')!r}) needs numeric ts and dur")
    bad = [a for a in ("chunk", "unit", "mb") if not (_is_number(args[a]) and float(args[a]).is_integer())]
    if bad:
        raise BadInput(f"{source}: slice {k} ({e.get('name')!r}) needs integer args {', '.join(bad)}")
    act = args.get("act_bytes")
    return Bar(
        start_s=float(e["ts"]) * US,
        dur_s=max(float(e["dur"]), 0.0) * US,
        name=str(e.get("name", "")),
        module=str(args["module"]),
        op=str(args["op"]),
        chunk=int(args["chunk"]),
        unit=int(args["unit"]),
        mb=int(args["mb"]),
        layers=str(args.get("layers", "")),
        act_bytes=float(act) if _is_number(act) else None,
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


# -- choosing what to show ------------------------------------------------------------------------
def _pick_series(first: TraceView, second: TraceView | None) -> list[tuple[str, str, list[Lane], TraceView]]:
    """``(label, kind, lanes, view)`` per series on the page; kind is ``plan`` or ``measured``."""
    if second is None:
        return [(s, s, first.lanes_of(s), first) for s in first.series()]
    if first.ranks != second.ranks:
        raise BadInput(
            f"{second.source} has {second.ranks} ranks but {first.source} has {first.ranks}; "
            f"compare traces of the same pipeline"
        )
    a_name = "plan" if "plan" in first.series() else first.series()[0]
    b_name = "measured" if "measured" in second.series() else second.series()[0]
    a_label, b_label = a_name, b_name
    if a_label == b_label:  # two plans (or two measurements): tell them apart by file
        a_label, b_label = f"{a_name} ({first.name})", f"{b_name} ({second.name})"
    return [(a_label, a_name, first.lanes_of(a_name), first), (b_label, b_name, second.lanes_of(b_name), second)]


def _round(x: float, digits: int) -> float:
    return round(float(x), digits)


def _page_data(picked: list[tuple[str, str, list[Lane], TraceView]], title: str, ranks: int) -> dict[str, Any]:
    modules: list[str] = []
    ops: list[str] = []
    layers: dict[int, str] = {}
    for _, _, lanes, _ in picked:
        for lane in lanes:
            for b in lane.bars:
                if b.module not in modules:
                    modules.append(b.module)
                if b.op not in ops:
                    ops.append(b.op)
                layers.setdefault(b.chunk, b.layers)
    series, lanes_out = [], []
    for si, (name, kind, lanes, view) in enumerate(picked):
        meta = view.meta
        planned = kind == "plan"
        series.append(
            {
                "name": name,
                "kind": kind,
                "source": view.name,
                "schedule": meta.get("schedule"),
                "label": meta.get("label"),
                "status": meta.get("status"),
                "iteration_s": meta.get("iteration_time_s") if planned else None,
                "bubble": meta.get("bubble_fraction") if planned else None,
                "makespan_s": _makespan(lanes),
                "bars": sum(len(lane.bars) for lane in lanes),
            }
        )
        for lane in lanes:
            lanes_out.append(
                {
                    "rank": lane.rank,
                    "series": si,
                    "bars": _columns(lane, modules, ops),
                    "mem": {
                        "t": [_round(t, _TIME_DIGITS) for t, _ in lane.memory],
                        "v": [_round(v, _MEM_DIGITS) for _, v in lane.memory],
                    },
                }
            )
    limits = [v.meta.get("memory_limit_gib") for _, _, _, v in picked]
    limit = next((x for x in limits if _is_number(x)), None)
    return {
        "title": title,
        "ranks": ranks,
        "series": series,
        "modules": modules,
        "ops": ops,
        "layers": {str(c): s for c, s in sorted(layers.items())},
        "memLimitGiB": limit,
        "lanes": lanes_out,
    }


def _columns(lane: Lane, modules: list[str], ops: list[str]) -> dict[str, list]:
    """A lane's bars as columns (compact JSON): start, duration, module/op index, chunk, unit, mb, name, act GiB."""
    bars = lane.bars
    return {
        "s": [_round(b.start_s, _TIME_DIGITS) for b in bars],
        "d": [_round(b.dur_s, _TIME_DIGITS) for b in bars],
        "m": [modules.index(b.module) for b in bars],
        "o": [ops.index(b.op) for b in bars],
        "c": [b.chunk for b in bars],
        "u": [b.unit for b in bars],
        "b": [b.mb for b in bars],
        "n": [b.name for b in bars],
        "a": [None if b.act_bytes is None else _round(b.act_bytes / 2**30, _MEM_DIGITS) for b in bars],
    }


def _makespan(lanes: list[Lane]) -> float:
    return max((b.start_s + b.dur_s for lane in lanes for b in lane.bars), default=0.0)


# -- the page -------------------------------------------------------------------------------------
def _asset(name: str) -> str:
    return resources.files("dip.viz").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>``, no HTML entities)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _default_title(first: TraceView, second: TraceView | None) -> str:
    meta = first.meta
    label = "planned vs measured" if second is None and "measured" in first.series() else meta.get("label")
    what = " ".join(str(x) for x in (meta.get("schedule"), label) if x) or "trace"
    title = f"{what} ({first.name})"
    if second is not None:
        title += f" vs {second.name}"
    return title


def build_viewer(
    *,
    trace: Any,
    source: str = "trace",
    measured: Any | None = None,
    measured_source: str = "measured trace",
    title: str | None = None,
) -> ViewerPage:
    """Render the interactive viewer page of a dip trace.

    Args:
        trace: the parsed JSON of a trace written by ``dip plan/simulate/train --trace``.
        source: its file name (page title, error messages).
        measured: an optional second trace drawn next to the first: its measured lanes when it is a
            ``dip train`` trace, else its plan lanes.
        measured_source: the second trace's file name.
        title: the page title (default: schedule, label and file names).

    Returns:
        The page (self-contained HTML) and the number of ranks, bars and memory points per series.

    Raises:
        BadInput: an input is not a dip trace, or the two traces have different numbers of ranks.
    """
    first = read_trace(trace, source=source)
    second = read_trace(measured, source=measured_source) if measured is not None else None
    picked = _pick_series(first, second)
    ranks = max(first.ranks, second.ranks if second else 0)
    title = title if title is not None else _default_title(first, second)
    data = _page_data(picked, title, ranks)
    page = _fill(
        _asset("viewer.html"),
        {"TITLE": html_escape.escape(title), "DATA": _script_json(data), "SCRIPT": _asset("viewer.js")},
    )
    summaries = tuple(
        SeriesSummary(
            name=name,
            bars=sum(len(lane.bars) for lane in lanes),
            memory_points=sum(len(lane.memory) for lane in lanes),
            makespan_s=_makespan(lanes),
        )
        for name, _, lanes, _ in picked
    )
    return ViewerPage(html=page, ranks=ranks, series=summaries)


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``@@NAME@@`` in one pass (a value holding ``@@X@@`` is not expanded again)."""
    return re.sub(r"@@([A-Z]+)@@", lambda m: values[m.group(1)], template)
