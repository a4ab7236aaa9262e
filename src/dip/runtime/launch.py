"""Start the ranks of ``dip train``: N local processes with an env:// rendezvous on 127.0.0.1.

``launch(cfg)`` writes the config to a temporary folder (``launch_many`` several configs, run one
after the other in one process group), starts ``python -m dip.runtime.launch CONFIG`` (built-in models;
``dip train`` starts ``python -m dip.integrations.launch CONFIG``, which also loads checkpoints,
factories and datasets) once per rank (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set), and
watches them: when a rank dies the others are killed at once and :class:`RankFailed` names the rank
that failed first (a rank that died without an error, or whose error is not a consequence of another
rank's death) and its last error line. Rank 0 writes the report to ``result.json``; a ``BadInput`` raised
on a rank comes back as ``BadInput``.

The ranks die with the launcher (``PR_SET_PDEATHSIG``, set by each rank at start-up), so a launcher
killed outright leaves no rank training on. SIGTERM or SIGINT to the launcher is passed on to the ranks
as SIGTERM (they finish the current step, write a checkpoint and exit 0); a second one kills them. Rank
0's progress lines (``DIP_PROGRESS_FILE``) are relayed to the launcher's standard error.

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
import threading
import time
import traceback
from dataclasses import asdict
from typing import Any

from dip.errors import BadInput
from dip.runtime.faults import die_with_parent
from dip.runtime.loading import DataOpener, ModelLoader, load_builtin, no_data
from dip.runtime.metrics import PROGRESS_ENV
from dip.runtime.spawn import LOCALHOST, free_port
from dip.runtime.trainer import TrainConfig, finish, train

__all__ = ["RankFailed", "launch", "launch_many", "worker_main"]

ERROR_FILE = "error-{rank}.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.log"
LAUNCHER_ENV = "DIP_LAUNCHER_PID"


class RankFailed(RuntimeError):
    """A rank exited with an error; the message names the rank and its last error line."""


def worker_env(rank: int, world: int, port: int, threads: int, progress: str | None = None) -> dict[str, str]:
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
            LAUNCHER_ENV: str(os.getpid()),
        }
    )
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    if progress and rank == 0:
        env[PROGRESS_ENV] = progress
    else:
        env.pop(PROGRESS_ENV, None)
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
        progress = os.path.join(workdir, PROGRESS_FILE)
        procs: list[subprocess.Popen] = []
        logs = []
        signals = _Forwarder(procs).install()
        try:
            for rank in range(nproc):
                log = open(os.path.join(workdir, f"rank{rank}.log"), "wb")
                logs.append(log)
                env = worker_env(rank, nproc, port, threads, progress)
                procs.append(subprocess.Popen([*cmd, config], env=env, stdout=log, stderr=subprocess.STDOUT))
            _watch(procs, workdir, poll_s, _Relay(progress))
        finally:
            signals.restore()
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


class _Forwarder:
    """The launcher's SIGTERM / SIGINT handler: the first signal asks every rank to stop after its
    current step (SIGTERM), a second one kills them."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs, self.count, self.previous = procs, 0, {}

    def install(self) -> _Forwarder:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if self.count == 1 else signal.SIGKILL)


class _Relay:
    """Copies the lines rank 0 appends to its progress file to the launcher's standard error."""

    def __init__(self, path: str):
        self.path, self.offset = path, 0

    def poll(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                text = f.read()
        except OSError:
            return
        end = text.rfind("\n") + 1  # whole lines only
        if end:
            sys.stderr.write(text[:end])
            sys.stderr.flush()
            self.offset += len(text[:end].encode("utf-8"))


def _watch(procs: list[subprocess.Popen], workdir: str, poll_s: float, relay: _Relay | None = None) -> None:
    """Wait for every rank; the first one that fails stops the others and is reported."""
    while True:
        if relay is not None:
            relay.poll()
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            first = list(failed)
            time.sleep(0.2)  # let a rank that raised first finish writing its error
            codes = [p.poll() for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            if relay is not None:
                relay.poll()
            _raise_failure(failed, codes, workdir, first)
        if all(c == 0 for c in codes):
            if relay is not None:
                relay.poll()
            return
        time.sleep(poll_s)


def _raise_failure(failed: list[int], codes: list, workdir: str, first: list[int] | None = None) -> None:
    errors = {}
    for r in range(len(codes)):
        path = os.path.join(workdir, ERROR_FILE.format(rank=r))
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                errors[r] = json.load(f)
    bad = [e for e in errors.values() if e.get("type") == "BadInput"]
    if bad:
        raise BadInput(bad[0]["message"])
    # the root cause: among the ranks that failed first, a rank whose error is not a consequence of
    # another rank's death, else one that died without an error (killed, os._exit, a crash), else any
    first = first or failed

    def blame(r: int) -> tuple:
        err = errors.get(r)
        kind = 0 if err is not None and not _is_consequence(err["message"]) else (1 if err is None else 2)
        return (r not in first, kind, r)

    rank = min(failed, key=blame)
    err = errors.get(rank)
    if err is not None:
        raise RankFailed(f"rank {rank} failed: {err['message']}")
    raise RankFailed(f"rank {rank} died with {_exit_text(codes[rank])}{_log_tail(workdir, rank)}")


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


CONSEQUENCES = (
    "timed out",
    "connection closed",
    "connection reset",
    "connection was likely closed",
    "broken pipe",
    "lost contact",
)


def _is_consequence(message: str) -> bool:
    """Errors a rank gets because a peer died or stopped answering."""
    text = message.lower()
    return any(k in text for k in CONSEQUENCES)


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
    if os.environ.get(LAUNCHER_ENV):
        die_with_parent(int(os.environ[LAUNCHER_ENV]))  # no rank trains on after its launcher was killed
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
