"""Start the ranks of ``dip train``: N local processes with an env:// rendezvous on 127.0.0.1.

``launch(cfg)`` writes the config to a temporary folder (``launch_many`` several configs, run one
after the other in one process group), starts ``python -m dip.runtime.launch CONFIG`` (built-in models;
``dip train`` starts ``python -m dip.integrations.launch CONFIG``, which also loads checkpoints,
factories and datasets) once per rank (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set), and
watches them: when a rank dies the others are killed at once and :class:`RankFailed` names the rank
and its last error line. Rank 0 writes the report to ``result.json``; a ``BadInput`` raised on a rank
comes back as ``BadInput``.

(:func:`dip.runtime.spawn.spawn` runs a Python function on N local processes instead: tests, benchmarks.)

Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` already set) ``dip train`` calls
:func:`dip.runtime.trainer.train` in-process instead (see ``docs/runtime.md``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from typing import Any

from dip.errors import BadInput
from dip.runtime.loading import DataOpener, ModelLoader, load_builtin, no_data
from dip.runtime.spawn import LOCALHOST, free_port
from dip.runtime.trainer import TrainConfig, finish, train

__all__ = ["RankFailed", "launch", "launch_many", "worker_main"]

ERROR_FILE = "error-{rank}.json"
RESULT_FILE = "result.json"


class RankFailed(RuntimeError):
    """A rank exited with an error; the message names the rank and its last error line."""


def worker_env(rank: int, world: int, port: int, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": LOCALHOST,
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": str(threads),
            "DIP_WORKER": "1",
        }
    )
    return env


def default_threads(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(nproc, 1))


def launch(cfg: TrainConfig, poll_s: float = 0.05, worker: list[str] | None = None) -> dict[str, Any]:
    """Run ``cfg`` on ``cfg.nproc`` local processes and return rank 0's report."""
    return launch_many([cfg], poll_s, worker)[0]


def launch_many(cfgs: list[TrainConfig], poll_s: float = 0.05, worker: list[str] | None = None) -> list[dict]:
    """Run several trainings one after the other in one process group (same ``nproc``); one report each.

    ``worker`` is the command that starts a rank (default ``python -m dip.runtime.launch``); the config
    file path is appended."""
    nproc = cfgs[0].nproc
    if any(c.nproc != nproc for c in cfgs):
        raise ValueError("launch_many needs one nproc for every config")
    workdir = tempfile.mkdtemp(prefix="dip-train-")
    try:
        threads = cfgs[0].threads or default_threads(nproc)
        for c in cfgs:
            c.threads = c.threads or threads
        config = os.path.join(workdir, "config.json")
        with open(config, "w", encoding="utf-8") as f:
            json.dump({"configs": [asdict(c) for c in cfgs], "workdir": workdir}, f)
        port = free_port()
        cmd = list(worker or [sys.executable, "-m", "dip.runtime.launch"])
        procs: list[subprocess.Popen] = []
        logs = []
        try:
            for rank in range(nproc):
                log = open(os.path.join(workdir, f"rank{rank}.log"), "wb")
                logs.append(log)
                procs.append(
                    subprocess.Popen(
                        [*cmd, config], env=worker_env(rank, nproc, port, threads), stdout=log, stderr=subprocess.STDOUT
                    )
                )
            _watch(procs, workdir, poll_s)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for log in logs:
                log.close()
        with open(os.path.join(workdir, RESULT_FILE), encoding="utf-8") as f:
            return json.load(f)
    finally:
        if not os.environ.get("DIP_KEEP_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)


def _watch(procs: list[subprocess.Popen], workdir: str, poll_s: float) -> None:
    """Wait for every rank; the first one that fails stops the others and is reported."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            time.sleep(0.2)  # let a rank that raised first finish writing its error
            codes = [p.poll() for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            _raise_failure(failed, codes, workdir)
        if all(c == 0 for c in codes):
            return
        time.sleep(poll_s)


def _raise_failure(failed: list[int], codes: list, workdir: str) -> None:
    errors = {}
    for r in range(len(codes)):
        path = os.path.join(workdir, ERROR_FILE.format(rank=r))
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                errors[r] = json.load(f)
    bad = [e for e in errors.values() if e.get("type") == "BadInput"]
    if bad:
        raise BadInput(bad[0]["message"])
    # the root cause: a rank with an error that is not a consequence of another rank's death
    ranked = sorted(errors.items(), key=lambda kv: (_is_consequence(kv[1]["message"]), kv[0]))
    if ranked:
        rank, err = ranked[0]
        raise RankFailed(f"rank {rank} failed: {err['message']}")
    rank = failed[0]
    raise RankFailed(f"rank {rank} died with exit code {codes[rank]}{_log_tail(workdir, rank)}")


def _is_consequence(message: str) -> bool:
    """Errors a rank gets because a peer died or stopped answering."""
    text = message.lower()
    return any(k in text for k in ("timed out", "connection closed", "connection reset", "broken pipe"))


def _log_tail(workdir: str, rank: int) -> str:
    path = os.path.join(workdir, f"rank{rank}.log")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""


def worker_main(config_path: str, *, load: ModelLoader = load_builtin, open_data: DataOpener = no_data) -> int:
    """Entry point of one rank started by :func:`launch` (``load`` / ``open_data``: see
    :func:`~dip.runtime.trainer.train`; ``dip.integrations.launch`` passes the integrations' loaders)."""
    with open(config_path, encoding="utf-8") as f:
        payload = json.load(f)
    cfgs = [TrainConfig(**c) for c in payload["configs"]]
    workdir = payload["workdir"]
    rank = int(os.environ["RANK"])
    try:
        outs = [train(cfg, load=load, open_data=open_data) for cfg in cfgs]
        if rank == 0:
            tmp = os.path.join(workdir, RESULT_FILE + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(outs, f)
            os.replace(tmp, os.path.join(workdir, RESULT_FILE))
        _shutdown(cfgs[-1].timeout_s)
        return 0
    except BaseException as exc:
        kind = "BadInput" if isinstance(exc, BadInput) else type(exc).__name__
        message = " ".join(str(exc).split("\n")[0].split()) or kind
        with open(os.path.join(workdir, ERROR_FILE.format(rank=rank)), "w", encoding="utf-8") as f:
            json.dump({"type": kind, "message": message}, f)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(2 if kind == "BadInput" else 1)  # skip process-group teardown, which may hang


def _shutdown(timeout_s: float) -> None:
    """Leave the process group once every rank is done with it, then exit without destructors
    (gloo's background threads can abort a process that tears down while a peer still talks)."""
    finish(timeout_s)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
