import json

import pytest

from dip.errors import BadInput
from dip.spec.hardware import PRESETS, GemmCurve, HardwareSpec, calibration_path, get_hardware, list_hardware


def test_presets_match_datasheets():
    h100, h800, h20, a100 = (get_hardware(n) for n in ("H100-SXM", "H800", "H20", "A100-80G"))
    assert h100.peak_flops == h800.peak_flops == 989e12
    assert h100.mem_bw == 3.35e12 and h100.nvlink_bw == 450e9
    assert h800.nvlink_bw == 200e9 and h800.net_bw == 25e9  # 8 x 200 Gb/s per node of 8 GPUs
    assert h20.peak_flops == 148e12 and h20.mem_bw == 4.0e12 and h20.mem_bytes == 96 * 2**30
    assert a100.peak_flops == 312e12 and a100.mem_bw == 2.04e12 and a100.nvlink_bw == 300e9


def test_get_hardware_is_case_insensitive_and_lists_choices():
    assert get_hardware("h800") is PRESETS["H800"]
    assert get_hardware(" a100-80g ").name == "A100-80G"
    assert set(list_hardware()) >= {"H800", "H100-SXM", "H20", "A100-80G", "cpu"}
    with pytest.raises(BadInput, match=r"unknown hardware 'B300'.*H800"):
        get_hardware("B300")


def test_cpu_preset_is_the_shipped_calibration():
    cpu = get_hardware("CPU")
    assert cpu.name == "cpu" and cpu.peak_flops > 1e9 and cpu.mem_bw > 1e8
    with open(calibration_path("cpu")) as f:
        raw = json.load(f)
    assert raw["measurements"] and raw["fit"]["rms_log_error"] < 1.0


def test_calibration_round_trip(tmp_path):
    hw = PRESETS["H800"].with_(
        name="mine",
        alphas={**PRESETS["H800"].alphas, "gemm": 1.7},
        gemm_curve=GemmCurve(10.0, 20.0, 30.0),
        attn_s0=99.0,
    )
    path = tmp_path / "hw.json"
    hw.save(str(path), extra={"measurements": [{"x": 1}], "fit": {"rms_log_error": 0.1}})
    back = get_hardware(str(path))
    assert back == hw and back.alpha("gemm") == 1.7 and back.gemm_curve == GemmCurve(10.0, 20.0, 30.0)
    assert hash(back) == hash(hw)


def test_bad_calibration_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        get_hardware(str(bad))
    bad.write_text(json.dumps({"name": "x", "peak_flops": 1.0}))
    with pytest.raises(BadInput, match="missing fields"):
        get_hardware(str(bad))
    bad.write_text(json.dumps({**PRESETS["H800"].to_dict(), "warp_drive": 1}))
    with pytest.raises(BadInput, match="unknown fields: warp_drive"):
        get_hardware(str(bad))
    with pytest.raises(BadInput, match="cannot be read"):
        get_hardware(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("peak_flops", "fast", "'peak_flops'"),
        ("peak_flops", float("nan"), "'peak_flops'"),
        ("mem_bytes", -1.0, "'mem_bytes'"),
        ("alphas", "fast", "'alphas'"),
        ("alphas", {"gemm": 0.0}, "'alphas.gemm'"),
        ("gpus_per_node", 0, "'gpus_per_node'"),
        ("runtime_factors", {"vit": {"x": 1.0}}, "runtime_factors.vit.x"),
        ("format", "dip-hardware-v0", "'format' must be 'dip-hardware-v1'"),
    ],
)
def test_calibration_fields_are_typed_and_bounded(tmp_path, field, value, words):
    bad = tmp_path / "cal.json"
    bad.write_text(json.dumps({**json.loads(open(calibration_path("cpu")).read()), field: value}))
    with pytest.raises(BadInput) as err:
        get_hardware(str(bad))
    assert words in str(err.value) and str(bad) in str(err.value) and "\n" not in str(err.value)


def test_gemm_efficiency_saturates_and_links():
    hw = PRESETS["H800"]
    effs = [hw.gemm_efficiency(m, 4096, 4096) for m in (256, 1024, 4096, 16384, 65536)]
    assert effs == sorted(effs) and effs[-1] < 1 / hw.alpha("gemm")
    assert effs[-1] / effs[0] > 2
    assert hw.link(8) == (hw.nvlink_bw, hw.nvlink_latency_s) and hw.link(16) == (hw.net_bw, hw.net_latency_s)
    assert hw.p2p_seconds(0) == 0 and hw.p2p_seconds(1e9, same_node=True) < hw.p2p_seconds(1e9)
    assert isinstance(hw, HardwareSpec)


def test_runtime_factors_round_trip_and_validation(tmp_path):
    hw = PRESETS["H800"].with_(name="rt", runtime_factors={"vit": {"f": 1.5, "b": 1.2}})
    path = tmp_path / "hw.json"
    hw.save(str(path), extra={"runtime_calibration": {"models": ["tiny-vlm"]}})
    back = get_hardware(str(path))
    assert back.runtime_factor("vit", "f") == 1.5 and back.runtime_factor("vit", "b") == 1.2
    assert back.runtime_factor("decoder", "f") == 1.0
    assert "runtime_factors" not in PRESETS["H800"].to_dict()
    for bad, msg in (
        ({"vit": 2.0}, r"'runtime_factors\.vit': 2\.0 is not allowed \(input should be a valid dictionary"),
        ({"vit": {"x": 1.0}}, r"'runtime_factors\.vit\.x'"),
        ({"vit": {"f": -1.0}}, r"'runtime_factors\.vit\.f': -1\.0 is not allowed \(input should be greater than 0"),
    ):
        path.write_text(json.dumps({**PRESETS["H800"].to_dict(), "runtime_factors": bad}))
        with pytest.raises(BadInput, match=msg):
            get_hardware(str(path))
    path.write_text(json.dumps({**PRESETS["H800"].to_dict(), "action_overhead_s": {"f": -1.0}}))
    with pytest.raises(
        BadInput, match=r"'action_overhead_s\.f': -1\.0 is not allowed \(input should be greater than or equal to 0"
    ):
        get_hardware(str(path))
