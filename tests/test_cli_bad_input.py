"""Every bad invocation a new user might try gets exit code 2, one line on stderr naming the flag or
field, a JSON error object on stdout under --json, and no traceback (the table grows with every
report of an unclear error)."""

from __future__ import annotations

import json

import pytest

from dip.cli.main import main

# (arguments, words the message must contain)
CASES = [
    ("models --bogus", ["--bogus"]),
    ("workload --model VLM-S --batches 0", ["batches"]),
    ("workload --model VLM-S --microbatches 0", ["microbatches"]),
    ("workload --model VLM-S --seed -3", ["seed"]),
    ("workload --model VLM-S --source nope", ["nope"]),
    ("workload --model NOPE", ["NOPE", "VLM-S"]),
    ("workload --manifest /nonexistent.jsonl --model VLM-S", ["/nonexistent.jsonl"]),
    ("cost --model VLM-S --tp 0", ["tp"]),
    ("cost --model VLM-S --tp 7", ["tp 7"]),
    ("cost --model VLM-S --images -1", ["images"]),
    ("cost --model T2V-S --clip-seconds nan", ["clip-seconds"]),
    ("cost --model VLM-S --clips 2", ["--clips"]),
    ("cost --model VLM-S --hardware nope", ["hardware", "H800"]),
    ("cost --model VLM-S --dp 0", ["dp"]),
    ("cost --model VLM-S --memory-reserve-gib -1", ["memory-reserve-gib"]),
    ("cost --model VLM-S --memory-reserve-gib nan", ["memory-reserve-gib"]),
    ("simulate --model VLM-S --schedule nope", ["schedule", "1f1b"]),
    ("simulate --model VLM-S --schedule 1f1b --tp 3", ["tp"]),
    ("simulate --model VLM-S --schedule 1f1b --pp 1000", ["pp"]),
    ("simulate --model VLM-S --schedule 1f1b --batches 0", ["batches"]),
    ("simulate --model VLM-S --schedule 1f1b --chunks 0", ["chunks"]),
    ("simulate --model VLM-S --schedule 1f1b --memory-limit-gib inf", ["memory-limit-gib"]),
    ("simulate --model VLM-S --schedule 1f1b --memory-limit-gib 1 --memory-reserve-gib 1", ["memory-reserve-gib"]),
    ("simulate --uniform-costs 1:1 --schedule 1f1b", ["--uniform-costs"]),
    ("simulate --uniform-costs nan:1:1 --schedule 1f1b", ["--uniform-costs"]),
    ("simulate --uniform-costs 1:1:1 --schedule optimus", ["optimus", "needs a model"]),
    ("simulate --uniform-costs 1:1:1 --schedule dip", ["dip plan --uniform-costs"]),
    ("simulate --model VLM-S", ["--schedule"]),
    ("plan --model NOPE", ["NOPE"]),
    ("plan --model VLM-S --budget nan", ["budget"]),
    ("plan --model VLM-S --budget inf", ["budget"]),
    ("plan --model VLM-S --budget 1 --rollouts 2", ["--rollouts", "--budget"]),
    ("plan --model VLM-S --rollouts -1", ["rollouts"]),
    ("plan --model VLM-S --workers 0", ["workers"]),
    ("plan --model VLM-S --strategy nope", ["--strategy", "mcts"]),
    ("plan --model VLM-S --sub-microbatch vit", ["--sub-microbatch"]),
    ("plan --model VLM-S --exact --exact-time-limit -1", ["exact-time-limit"]),
    ("plan --model VLM-S --exact --exact-time-limit nan", ["exact-time-limit"]),
    ("plan --model VLM-S --microbatches 100000", ["microbatches", "1024"]),
    ("plan --model VLM-S --memory-limit-gib nan", ["memory-limit-gib"]),
    ("plan --model VLM-S --chunks 2", ["--chunks"]),
    ("plan --model VLM-S --uniform-costs 1:1:1", ["--uniform-costs"]),
    ("plan", ["--model"]),
    ("profile --device tpu --out x.json", ["device", "cuda"]),
    ("profile --out x.json --hidden-scale 0", ["hidden-scale"]),
    ("profile --out x.json --modules nope", ["module", "nope"]),
    ("data sample --kind nope --out ds", ["kind"]),
    ("data sample --kind vlm --out ds --samples 0", ["samples"]),
    ("init-model nope --tiny --out m", ["nope"]),
    ("config", ["--print-defaults"]),
    ("config --check /nonexistent.yaml", ["/nonexistent.yaml"]),
    ("bench sim --repeats 0", ["repeats"]),
    ("bench runtime --model tiny-foo", ["tiny-foo"]),
    ("bench paper nope --out p", ["nope", "e2e"]),
    ("viz /nonexistent.json --out v.html", ["/nonexistent.json"]),
    ("train --model tiny-vlm --nproc 2 --steps 1 --timeout-s inf", ["timeout-s"]),
    ("train --model tiny-vlm --nproc 2 --steps 1 --timeout-s 0", ["timeout-s"]),
    ("train --model tiny-vlm --nproc 64 --steps 1", ["nproc"]),
    ("train --model tiny-vlm --nproc 6 --tp 3 --pp 2 --steps 1", ["head"]),
    ("train --model tiny-vlm --nproc 2 --steps 0", ["steps"]),
    ("train --model tiny-vlm --nproc 2 --schedule nope", ["schedule", "1f1b"]),
    ("train --model tiny-vlm --nproc 2 --fsdp-reshard-after-forward", ["--fsdp"]),
    ("train --model tiny-vlm --nproc 2 --lr nan", ["lr"]),
    ("train --model tiny-vlm --nproc 2 --grad-accum 0", ["grad-accum"]),
    ("train --model tiny-vlm --nproc 2 --resume", ["--checkpoint-dir"]),
    ("train --model tiny-vlm --nproc 2 --inject-fault nope", ["inject-fault"]),
    ("train --model tiny-vlm --nproc 2 --mixed-precision fp8", ["mixed-precision", "bf16"]),
    ("train --model tiny-vlm --nproc 2 --min-lr 1 --lr 0.1", ["min-lr"]),
    ("nope", ["nope"]),
]


@pytest.mark.parametrize("line,words", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_clear_line(capsys, tmp_path, monkeypatch, line, words):
    monkeypatch.chdir(tmp_path)  # relative outputs land here, and must not be created
    argv = [*line.split(), "--json"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out = capsys.readouterr()
    assert code == 2, (line, out.err)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    assert lines[0].startswith("dip"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "error" in json.loads(out.out)
    assert not list(tmp_path.iterdir()), "a failed command left files behind"
