"""The HTML schedule viewer: data extraction, ``dip viz`` and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.cli.main import main
from dip.errors import BadInput
from dip.schedule.ir import Plan
from dip.schedule.units import build_units, module_graph
from dip.sim import TaskGraph, list_schedule, simulate, stage_costs
from dip.spec import get_model
from dip.viz.html import build_viewer, read_trace
from dip.viz.trace import write_chrome_trace
from test_sim_costs import BATCH, FakeCostModel

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)


# -- traces ---------------------------------------------------------------------------------------
def tiny_vlm_run():
    """A simulated two-module (vit + llm) plan on 2 ranks."""
    model = get_model("tiny-vlm")
    graph = module_graph(model, 2, {"vit": [(0, 4), (4, 8)], "llm": [(0, 4), (4, 8)]})
    units, flows = build_units(model, graph, BATCH, {"vit": 2})
    costs = stage_costs(graph, units, flows, model, FakeCostModel(), BATCH)
    tg = TaskGraph.build(graph, units, flows, costs, split=True)
    plan = Plan(graph, units, flows, list_schedule(tg))
    return plan, simulate(plan, costs, taskgraph=tg)


def measured_rows(result, stretch: float = 1.25):
    """Fake measured times: the simulated ones stretched (as ``dip train`` would record them)."""
    return {r: [(str(a), s * stretch, e * stretch) for a, s, e in rows] for r, rows in result.action_times().items()}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """``plan.json`` (a plan trace) and ``train.json`` (planned + measured, as ``dip train --trace``)."""
    d = tmp_path_factory.mktemp("traces")
    plan, result = tiny_vlm_run()
    write_chrome_trace(str(d / "plan.json"), plan, result, label="plan")
    write_chrome_trace(str(d / "train.json"), plan, result, measured=measured_rows(result))
    return d, plan


def load(path) -> dict:
    return json.loads(open(path).read())


def slices_per_pid(doc: dict) -> Counter:
    return Counter(e["pid"] for e in doc["traceEvents"] if e["ph"] == "X")


def counters_per_pid(doc: dict) -> Counter:
    return Counter(e["pid"] for e in doc["traceEvents"] if e["ph"] == "C")


def page_data(page_html: str) -> dict:
    m = re.search(r'<script type="application/json" id="dip-data">(.*?)</script>', page_html, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1))


def synthetic_trace(per_rank: list[int], *, measured: bool = False, name: str = "m") -> dict:
    """A dip-shaped trace with ``per_rank[r]`` back-to-back slices on rank r (and measured copies)."""
    events: list[dict] = []
    for r, n in enumerate(per_rank):
        lanes = [(2 * r, "plan"), (2 * r + 1, "measured")] if measured else [(r, None)]
        for pid, series in lanes:
            label = f"rank {r}" + (f" ({series})" if series else "")
            events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": label}})
            for k in range(n):
                op = "FBW"[k % 3]
                events.append(
                    {
                        "ph": "X",
                        "name": f"{name} {op} mb{k}",
                        "cat": op,
                        "pid": pid,
                        "tid": 0,
                        "ts": 10.0 * k,
                        "dur": 9.0 if series != "measured" else 9.5,
                        "args": {"module": name, "chunk": r, "unit": k, "mb": k, "op": op},
                    }
                )
            if series != "measured":
                events += [
                    {"ph": "C", "name": "memory", "pid": pid, "ts": 10.0 * k, "args": {"GiB": 1.0 + k % 5}}
                    for k in range(n)
                ]
    return {"traceEvents": events, "otherData": {"generator": "dip", "label": "plan", "schedule": "synthetic"}}


# -- data extraction ------------------------------------------------------------------------------
def test_bars_per_rank_equal_the_compute_slices(traces):
    d, plan = traces
    doc = load(d / "plan.json")
    view = read_trace(doc, source="plan.json")
    assert view.series() == ["plan"] and view.ranks == plan.num_ranks == 2
    per_pid, mem_per_pid = slices_per_pid(doc), counters_per_pid(doc)
    for r in range(plan.num_ranks):
        lane = view.lanes[("plan", r)]
        assert len(lane.bars) == per_pid[r] > 0
        assert len(lane.memory) == mem_per_pid[r] > 0
        starts = [b.start_s for b in lane.bars]
        assert starts == sorted(starts)
    assert sum(per_pid.values()) == plan.num_actions()
    first = next(e for e in doc["traceEvents"] if e["ph"] == "X")
    bar = next(b for b in view.lanes[("plan", first["pid"])].bars if b.start_s == first["ts"] * 1e-6)
    assert (bar.module, bar.op, bar.chunk, bar.unit, bar.mb) == tuple(
        first["args"][k] for k in ("module", "op", "chunk", "unit", "mb")
    )
    assert bar.dur_s == pytest.approx(first["dur"] * 1e-6) and bar.act_bytes == first["args"]["act_bytes"]
    times = [t for t, _ in view.lanes[("plan", 0)].memory]
    assert times == sorted(times)


def test_trace_names_its_writer(traces):
    d, plan = traces
    other = load(d / "train.json")["otherData"]
    assert other["generator"] == "dip" and other["ranks"] == plan.num_ranks and other["measured"] is True
    assert "memory_limit_gib" in other and load(d / "plan.json")["otherData"]["measured"] is False


def test_train_trace_has_planned_and_measured_lanes(traces):
    d, plan = traces
    doc = load(d / "train.json")
    view = read_trace(doc, source="train.json")
    assert view.series() == ["plan", "measured"]
    per_pid = slices_per_pid(doc)
    for r in range(plan.num_ranks):
        planned, measured = view.lanes[("plan", r)], view.lanes[("measured", r)]
        assert len(planned.bars) == per_pid[2 * r] and len(measured.bars) == per_pid[2 * r + 1]
        assert len(planned.bars) == len(measured.bars) > 0
        assert planned.memory and not measured.memory  # the runtime measures times, not memory
        assert all(b.act_bytes is not None for b in measured.bars)
        assert max(b.start_s + b.dur_s for b in measured.bars) == pytest.approx(
            1.25 * max(b.start_s + b.dur_s for b in planned.bars)
        )


def test_page_embeds_every_bar_and_memory_point(traces):
    d, plan = traces
    doc = load(d / "train.json")
    page = build_viewer(trace=doc, source="train.json")
    data = page_data(page.html)
    assert [s["name"] for s in data["series"]] == ["plan", "measured"]
    assert page.ranks == data["ranks"] == 2 and len(data["lanes"]) == 4
    assert page.bars == sum(len(lane["bars"]["s"]) for lane in data["lanes"]) == sum(slices_per_pid(doc).values())
    assert sum(len(lane["mem"]["t"]) for lane in data["lanes"]) == sum(counters_per_pid(doc).values())
    assert {s.name: s.bars for s in page.series} == {"plan": plan.num_actions(), "measured": plan.num_actions()}
    assert set(data["modules"]) == {"vit", "llm"} and set(data["ops"]) <= {"F", "B", "I", "W"}
    assert data["memLimitGiB"] is None or data["memLimitGiB"] > 0
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page.html), "everything is inline"
    assert "planned vs measured" in page.html


def test_two_inputs_planned_vs_measured(traces):
    d, _plan = traces
    page = build_viewer(
        trace=load(d / "plan.json"), source="plan.json", measured=load(d / "train.json"), measured_source="train.json"
    )
    assert [s.name for s in page.series] == ["plan", "measured"]
    data = page_data(page.html)
    assert sorted((lane["rank"], lane["series"]) for lane in data["lanes"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    measured_lanes = [lane for lane in data["lanes"] if lane["series"] == 1]
    assert all(not lane["mem"]["t"] for lane in measured_lanes)
    # Two plans: both kept, told apart by file name.
    page = build_viewer(
        trace=load(d / "plan.json"),
        source="a/plan.json",
        measured=load(d / "plan.json"),
        measured_source="b/other.json",
    )
    assert [s.name for s in page.series] == ["plan (plan.json)", "plan (other.json)"]


def test_two_inputs_must_have_the_same_ranks(traces):
    d, _ = traces
    with pytest.raises(BadInput, match=r"other\.json has 3 ranks but plan\.json has 2"):
        build_viewer(
            trace=load(d / "plan.json"),
            source="plan.json",
            measured=synthetic_trace([2, 2, 2]),
            measured_source="other.json",
        )


def test_markup_in_names_cannot_break_the_page():
    doc = synthetic_trace([3], name="</script><script>alert(1)</script>")
    page = build_viewer(trace=doc, source="x.json", title="<b>&title</b>")
    assert page.html.count("</script>") == 2  # the data block and the viewer script
    assert "<title>&lt;b&gt;&amp;title&lt;/b&gt;</title>" in page.html
    assert page_data(page.html)["modules"] == ["</script><script>alert(1)</script>"]


@pytest.mark.parametrize(
    "doc, words",
    [
        ([1, 2], "traceEvents"),
        ({"traceEvents": []}, "rank N"),
        (
            {
                "traceEvents": [
                    {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "python3"}},
                    {"ph": "X", "name": "aten::mm", "pid": 1, "ts": 0, "dur": 3},
                ]
            },
            "rank N",
        ),
        (
            {
                "traceEvents": [
                    {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "rank 0"}},
                    {"ph": "X", "name": "f", "pid": 0, "ts": 0, "dur": 3, "args": {"module": "llm"}},
                ]
            },
            "lacks args op, chunk, unit, mb",
        ),
        (
            {
                "traceEvents": [
                    {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "rank 0"}},
                    {"ph": "X", "name": "f", "pid": 7, "ts": 0, "dur": 3},
                ]
            },
            "process 7",
        ),
        (
            {"traceEvents": [{"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "rank 0"}}]},
            "no compute slices",
        ),
    ],
)
def test_not_a_dip_trace(doc, words):
    with pytest.raises(BadInput, match=re.escape(words)) as err:
        read_trace(doc, source="odd.json")
    assert "odd.json" in str(err.value)


def test_empty_dip_trace_renders_no_bars():
    doc = synthetic_trace([0, 0])
    page = build_viewer(trace=doc, source="empty.json")
    assert page.bars == 0 and page.ranks == 2


@settings(max_examples=25, deadline=None)
@given(per_rank=st.lists(st.integers(0, 30), min_size=1, max_size=5), measured=st.booleans())
def test_extraction_keeps_every_slice(per_rank, measured):
    doc = synthetic_trace(per_rank, measured=measured)
    page = build_viewer(trace=doc, source="s.json")
    data = page_data(page.html)
    assert page.ranks == len(per_rank)
    assert page.bars == sum(per_rank) * (2 if measured else 1)
    for lane in data["lanes"]:
        bars = lane["bars"]
        assert len(bars["s"]) == per_rank[lane["rank"]]
        assert all(len(col) == len(bars["s"]) for col in bars.values())
        assert bars["s"] == sorted(bars["s"])
        is_measured = data["series"][lane["series"]]["name"] == "measured"
        assert len(lane["mem"]["t"]) == (0 if is_measured else per_rank[lane["rank"]])


# -- dip viz --------------------------------------------------------------------------------------
def run_viz(capsys, *args) -> tuple[int, str, str]:
    rc = main(["viz", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_writes_the_page(traces, capsys, tmp_path):
    d, plan = traces
    out = tmp_path / "view.html"
    rc, stdout, _ = run_viz(capsys, d / "train.json", "--out", out, "--title", "tiny step", "--json")
    assert rc == 0
    obj = json.loads(stdout)
    assert obj["out"] == str(out) and obj["ranks"] == 2 and obj["bars"] == 2 * plan.num_actions()
    assert [s["name"] for s in obj["series"]] == ["plan", "measured"] and obj["bytes"] == out.stat().st_size
    page = out.read_text()
    assert "<title>tiny step</title>" in page and page_data(page)["title"] == "tiny step"
    assert [f for f in os.listdir(tmp_path) if f.startswith(".dip-tmp-")] == []
    rc, stdout, _ = run_viz(capsys, d / "plan.json", d / "train.json", "--out", out)
    assert rc == 0 and stdout.startswith(f"wrote {out}: 2 ranks, plan ") and "measured" in stdout


def test_cli_on_a_simulated_vlm(capsys, tmp_path):
    trace, out = tmp_path / "t.json", tmp_path / "t.html"
    assert (
        main(["simulate", "--model", "VLM-S", "--schedule", "1f1b", "--batches", "1", "--trace", str(trace), "--json"])
        == 0
    )
    capsys.readouterr()
    rc, stdout, _ = run_viz(capsys, trace, "--out", out, "--json")
    assert rc == 0 and out.stat().st_size > 1000
    assert json.loads(stdout)["bars"] == sum(slices_per_pid(load(trace)).values()) > 100


def bad_cases(tmp_path, good: str) -> list[tuple[list[str], str]]:
    not_json = tmp_path / "notes.txt"
    not_json.write_text("hello")
    binary = tmp_path / "blob.json"
    binary.write_bytes(b"\xff\xfe\x00bad")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"traceEvents": [{"ph": "X", "name": "aten::mm", "pid": 1, "ts": 0, "dur": 1}]}))
    out = str(tmp_path / "o.html")
    return [
        ([str(tmp_path / "missing.json"), "--out", out], "missing.json"),
        ([str(tmp_path), "--out", out], "is a directory"),
        ([str(not_json), "--out", out], "notes.txt"),
        ([str(binary), "--out", out], "blob.json"),
        ([str(other), "--out", out], "other.json"),
        ([good, str(tmp_path / "missing2.json"), "--out", out], "missing2.json"),
        ([good, "--out", str(tmp_path)], "--out"),
        ([good, "--out", str(tmp_path / "no-such-folder" / "x.html")], "no-such-folder"),
        ([good, "--out", "/proc/dip-viz.html"], "--out"),
        ([good, "--out", good], "input"),
    ]


def test_cli_bad_inputs_are_one_line(traces, capsys, tmp_path):
    d, _ = traces
    for args, words in bad_cases(tmp_path, str(d / "plan.json")):
        rc, _stdout, err = run_viz(capsys, *args)
        assert rc == 2, args
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert words in err, (words, err)
        assert not os.path.exists(tmp_path / "o.html")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".dip-tmp-")]


def test_cli_checks_the_output_before_reading(capsys, tmp_path):
    rc, _, err = run_viz(capsys, tmp_path / "missing.json", "--out", tmp_path / "nope" / "x.html")
    assert rc == 2 and "--out" in err and "missing.json" not in err


# -- the page in headless Chromium ----------------------------------------------------------------
def find_browser() -> tuple[str, str]:
    """Debian's chromium and chromedriver (``DIP_CHROMIUM`` / ``DIP_CHROMEDRIVER`` override the paths)."""
    browser = os.environ.get("DIP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("DIP_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [p for p in (browser, driver) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"headless Chromium not found ({', '.join(missing)}): install Debian's packages with "
            f"'apt-get install -y chromium chromium-driver' (scripts/setup.sh does it when run as root)",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture(scope="module")
def chromium():
    from selenium import webdriver  # the test extra's browser driver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="dip-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    session.set_page_load_timeout(60)
    yield session
    session.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(chromium, path) -> dict:
    """Load ``path``; return ``document.body.dataset`` after asserting no console errors."""
    chromium.get(path.resolve().as_uri())
    dataset = chromium.execute_script("return Object.assign({}, document.body.dataset)")
    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    assert dataset.get("ready") == "1", dataset
    return dataset


def dataset(chromium) -> dict:
    return chromium.execute_script("return Object.assign({}, document.body.dataset)")


@pytest.mark.browser
def test_page_shows_every_bar_and_reacts(chromium, traces, tmp_path, capsys):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    d, plan = traces
    out = tmp_path / "train.html"
    assert run_viz(capsys, d / "train.json", "--out", out)[0] == 0
    data = open_page(chromium, out)
    expected = 2 * plan.num_actions()
    assert data["bars"] == data["visible"] == str(expected)
    assert data["ranks"] == "2" and data["lanes"] == "4"
    assert int(data["memoryPoints"]) == sum(counters_per_pid(load(d / "train.json")).values())
    legend = chromium.find_element("id", "legend").text
    assert "vit" in legend and "llm" in legend and "forward" in legend

    chromium.find_element("id", "zoom-in").click()
    chromium.find_element("id", "zoom-in").click()
    zoomed = int(dataset(chromium)["visible"])
    assert 0 < zoomed < expected
    before = chromium.find_element("id", "range").text
    canvas = chromium.find_element("id", "canvas")
    ActionChains(chromium).click_and_hold(canvas).move_by_offset(-200, 0).release().perform()
    assert chromium.find_element("id", "range").text != before  # dragged to later times

    # Hover the first bar of rank 0's planned lane: the tooltip names it.
    chromium.find_element("id", "zoom-fit").click()
    assert dataset(chromium)["visible"] == str(expected)
    x, y = chromium.execute_script("return window.dipViewer.barPosition(0, 0, 0)")
    x, y = x - canvas.size["width"] / 2, y - canvas.size["height"] / 2  # offsets from the canvas centre
    ActionChains(chromium).move_to_element_with_offset(canvas, int(x), int(y)).perform()
    tip = chromium.find_element("id", "tip").text
    for word in ("module", "chunk", "micro-batch", "unit", "op", "start", "duration", "memory"):
        assert word in tip, tip
    ActionChains(chromium).scroll_from_origin(ScrollOrigin.from_element(canvas, 100, 0), 0, -400).perform()
    chromium.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert int(dataset(chromium)["visible"]) < expected  # the wheel zoomed in
    assert [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.browser
def test_large_trace_page_loads(chromium, tmp_path):
    doc = synthetic_trace([5000] * 8, measured=True)
    trace, out = tmp_path / "big.json", tmp_path / "big.html"
    trace.write_text(json.dumps(doc))
    assert main(["viz", str(trace), "--out", str(out)]) == 0
    data = open_page(chromium, out)
    assert data["bars"] == data["visible"] == str(80000) and data["lanes"] == "16"
