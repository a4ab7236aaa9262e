"""Experiment configuration files: one YAML file describes an experiment for ``dip plan``, ``dip
simulate``, ``dip train`` and ``dip bench``; flags given on the command line override it.

The file is validated with pydantic (:class:`ExperimentConfig`): a bad value is one line naming the file,
the field path, the value and what is allowed. ``dip config --print-defaults`` prints a complete
commented example (:func:`defaults_yaml`); a command given ``--config FILE`` writes the resolved
configuration beside its outputs (:func:`write_resolved`) so that any result can be rerun exactly.

Each field maps to one command-line option (``OPTION_OF``); a field that a command has no option for
(e.g. ``train.steps`` for ``dip plan``) is simply not used by that command.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dip.errors import BadInput, validation_message
from dip.io import write_atomic

__all__ = [
    "CONFIG_COMMANDS",
    "ExperimentConfig",
    "apply_config",
    "defaults_yaml",
    "load_config",
    "resolved_config",
    "write_resolved",
]

CONFIG_COMMANDS = ("plan", "simulate", "train", "bench")
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Parallel(_Section):
    """How the model is split over GPUs (Megatron's tensor x pipeline x data parallelism)."""

    tp: PositiveInt | None = Field(None, description="tensor-parallel degree (null: the model's)")
    pp: PositiveInt | None = Field(None, description="pipeline-parallel degree (null: the model's)")
    dp: PositiveInt | None = Field(None, description="data-parallel degree (null: the model's)")
    sequence_parallel: bool = Field(True, description="shard TP-replicated activations over TP (Megatron default)")
    distributed_optimizer: bool = Field(True, description="shard optimizer state over DP (ZeRO-1) when dp > 1")


class Memory(_Section):
    """Usable memory per GPU."""

    limit_gib: PositiveFloat | None = Field(None, description="usable GiB per GPU (null: capacity minus reserve)")
    reserve_gib: NonNegativeFloat | None = Field(None, description="GiB kept free per GPU (null: 8% of capacity)")


class Workload(_Section):
    """What batches are planned, simulated or trained."""

    batches: PositiveInt = Field(1, description="global batches to plan or simulate")
    microbatches: Annotated[int, Field(ge=1, le=1024)] = Field(64, description="micro-batches per global batch")
    seed: NonNegativeInt = Field(0, description="workload (and search) seed")
    manifest: str | None = Field(None, description="JSONL/Parquet manifest of real samples instead of generated ones")
    data: str | None = Field(None, description="dataset of dip train (LLaVA JSONL, WebDataset shards, T2V JSONL)")


class Planner(_Section):
    """DIP's per-batch search."""

    budget_s: PositiveFloat | None = Field(2.0, description="search seconds per batch")
    rollouts: NonNegativeInt | None = Field(None, description="rollouts per batch (deterministic; overrides budget)")
    workers: PositiveInt | None = Field(None, description="search processes (null: half of the cores)")
    strategy: Literal["mcts", "dfs", "random"] = Field("mcts", description="segment search strategy")
    exact: bool = Field(False, description="also solve the exact optimum with CP-SAT (small batches)")
    exact_time_limit_s: PositiveFloat = Field(120.0, description="CP-SAT seconds per batch")
    sub_microbatch: dict[str, PositiveInt] = Field({}, description="sub-microbatch size per module, e.g. {vit: 12}")
    segments: dict[str, PositiveInt] = Field({}, description="pipeline segments per module, e.g. {vit: 2}")
    baselines: bool = Field(True, description="also simulate every baseline on the same batches")


class Simulate(_Section):
    """dip simulate: one named schedule."""

    schedule: str = Field("megatron", description="dip or a baseline (gpipe, 1f1b, interleaved, zb-h1, megatron, ...)")
    chunks: PositiveInt | None = Field(None, description="chunks per rank of the interleaved schedules")
    strict: bool = Field(False, description="exit with code 1 when the plan does not fit the usable memory")


class Train(_Section):
    """dip train: the training run."""

    schedule: str = Field("dip", description="dip or a baseline")
    nproc: PositiveInt | None = Field(None, description="processes (null: torchrun's world size, else pp x dp)")
    steps: PositiveInt = Field(3, description="training steps")
    microbatches: PositiveInt = Field(8, description="micro-batches per data-parallel replica per step")
    dtype: Literal["float32", "float64"] | None = Field(None, description="null: float32 (float64 with the check)")
    check_reference: bool = Field(False, description="compare with single-process training of the same batches")
    timeout_s: PositiveFloat = Field(120.0, description="timeout of every wait, seconds")
    bind_cores: Literal["auto", "on", "off"] = Field("auto", description="bind each local rank to its own cores")
    strict: bool = Field(False, description="stop at the first bad sample of --data instead of skipping it")
    context_length: PositiveInt | None = Field(None, description="packing length of --data (null: the model's)")
    data_workers: NonNegativeInt = Field(2, description="data-loading processes per rank")
    save_hf: str | None = Field(None, description="write the trained checkpoint here (checkpoint models)")
    static_costs: bool = Field(False, description="plan with the shipped calibration only (no online correction)")
    hardware: str = Field("auto", description="the planner's hardware (auto: cpu, or h100 on CUDA)")
    workload: Literal["default", "dynamic"] = Field("default", description="generated data: mixture or dynamic")
    async_planner: bool = Field(False, description="plan the coming steps in separate CPU processes")
    planner_workers: PositiveInt | None = Field(None, description="planner processes (null: half the free cores)")
    plan_deadline_s: NonNegativeFloat = Field(0.02, description="longest wait for a searched plan, seconds")
    plan_ahead: PositiveInt | None = Field(None, description="steps planned ahead (null: workers + 1, >= 2)")
    plan_budget_s: PositiveFloat | None = Field(None, description="search seconds per step (null: paced)")
    deterministic: bool = Field(False, description="fixed rollout budget, no deadline: reproducible plans")
    checkpoint_dir: str | None = Field(None, description="write checkpoints (DCP) as DIR/step-N")
    checkpoint_every: PositiveInt | None = Field(None, description="checkpoint every N steps (null: at the end)")
    keep_last: NonNegativeInt = Field(0, description="keep the newest K checkpoints (0: all)")
    resume: bool = Field(False, description="continue from the latest checkpoint in checkpoint_dir")
    inject_fault: list[str] = Field([], description="faults to inject: planner-crash:STEP, rank-exit:RANK:STEP")
    lr: PositiveFloat = Field(1e-3, description="peak learning rate (AdamW)")
    min_lr: NonNegativeFloat | None = Field(None, description="learning rate at the last step (null: lr)")
    warmup_steps: NonNegativeInt = Field(0, description="linear warm-up steps")
    weight_decay: NonNegativeFloat = Field(0.01, description="AdamW weight decay")
    grad_clip: PositiveFloat | None = Field(None, description="clip gradients to this global norm (null: off)")
    grad_accum: PositiveInt = Field(1, description="pipeline passes per optimizer step")
    mixed_precision: Literal["none", "bf16"] = Field("none", description="bf16: bfloat16 compute, fp32 weights")
    metrics: str | None = Field(None, description="append per-step metrics to this JSONL file")
    fsdp: bool = Field(False, description="shard parameters, gradients and optimizer state over dp (FSDP2)")
    fsdp_reshard_after_forward: bool = Field(
        False, description="FSDP: free gathered parameters after every forward (replicas' plans must agree)"
    )


class ExperimentConfig(_Section):
    """One experiment: model, hardware, parallel layout, workload and the options of each command."""

    model: str = Field("VLM-S", description="preset, model file, checkpoint folder or factory (dip train)")
    hardware: str = Field("H800", description="hardware preset or calibration JSON")
    parallel: Parallel = Parallel()
    memory: Memory = Memory()
    workload: Workload = Workload()
    planner: Planner = Planner()
    simulate: Simulate = Simulate()
    train: Train = Train()

    @field_validator("model", "hardware")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


# field path -> (argparse dest, how the field's value becomes the option's value); sections apply to
# the commands that have the option
OPTION_OF: dict[str, tuple[str, Any]] = {
    "model": ("model", None),
    "hardware": ("hardware", None),
    "parallel.tp": ("tp", None),
    "parallel.pp": ("pp", None),
    "parallel.dp": ("dp", None),
    "parallel.sequence_parallel": ("no_sequence_parallel", lambda v: not v),
    "parallel.distributed_optimizer": ("no_distributed_optimizer", lambda v: not v),
    "memory.limit_gib": ("memory_limit_gib", None),
    "memory.reserve_gib": ("memory_reserve_gib", None),
    "workload.batches": ("batches", None),
    "workload.microbatches": ("microbatches", None),
    "workload.seed": ("seed", None),
    "workload.manifest": ("manifest", None),
    "workload.data": ("data", None),
    "planner.budget_s": ("budget", None),
    "planner.rollouts": ("rollouts", None),
    "planner.workers": ("workers", None),
    "planner.strategy": ("strategy", None),
    "planner.exact": ("exact", None),
    "planner.exact_time_limit_s": ("exact_time_limit", None),
    "planner.sub_microbatch": ("sub_microbatch", lambda v: [f"{k}={n}" for k, n in v.items()]),
    "planner.segments": ("segments", lambda v: [f"{k}={n}" for k, n in v.items()]),
    "planner.baselines": ("no_baselines", lambda v: not v),
    "simulate.schedule": ("schedule", None),
    "simulate.chunks": ("chunks", None),
    "simulate.strict": ("strict", None),
    "train.schedule": ("schedule", None),
    "train.nproc": ("nproc", None),
    "train.steps": ("steps", None),
    "train.microbatches": ("microbatches", None),
    "train.dtype": ("dtype", None),
    "train.check_reference": ("check_reference", None),
    "train.timeout_s": ("timeout_s", None),
    "train.bind_cores": ("bind_cores", None),
    "train.strict": ("strict", None),
    "train.context_length": ("context_length", None),
    "train.data_workers": ("data_workers", None),
    "train.save_hf": ("save_hf", None),
    "train.fsdp": ("fsdp", None),
    "train.fsdp_reshard_after_forward": ("fsdp_reshard_after_forward", None),
    "train.static_costs": ("static_costs", None),
    "train.hardware": ("train_hardware", None),
    "train.workload": ("workload", None),
    "train.async_planner": ("async_planner", None),
    "train.planner_workers": ("planner_workers", None),
    "train.plan_deadline_s": ("plan_deadline_s", None),
    "train.plan_ahead": ("plan_ahead", None),
    "train.plan_budget_s": ("plan_budget_s", None),
    "train.deterministic": ("deterministic", None),
    "train.checkpoint_dir": ("checkpoint_dir", None),
    "train.checkpoint_every": ("checkpoint_every", None),
    "train.keep_last": ("keep_last", None),
    "train.resume": ("resume", None),
    "train.inject_fault": ("inject_fault", None),
    "train.lr": ("lr", None),
    "train.min_lr": ("min_lr", None),
    "train.warmup_steps": ("warmup_steps", None),
    "train.weight_decay": ("weight_decay", None),
    "train.grad_clip": ("grad_clip", None),
    "train.grad_accum": ("grad_accum", None),
    "train.mixed_precision": ("mixed_precision", None),
    "train.metrics": ("metrics", None),
}
# sections that belong to one command only (their options share names with other sections')
COMMAND_SECTIONS = {"simulate": "simulate", "train": "train"}


def load_config(path: str) -> ExperimentConfig:
    """The validated configuration in ``path``; :class:`BadInput` naming the file and the field."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise BadInput(f"config file {path!r} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise BadInput(f"config file {path!r} is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadInput(f"config file {path!r} must hold a mapping of sections (model, parallel, planner, ...)")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(f"config file {path!r}: {validation_message(exc, _fields_of)}") from None


def _fields_of(section: str) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in filter(None, section.split(".")):
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return list(model.model_fields)


def _flat(obj: BaseModel, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            yield from _flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def apply_config(
    config: ExperimentConfig, args: argparse.Namespace, parser: argparse.ArgumentParser, given: set[str]
) -> None:
    """Set the options of ``args`` from ``config`` where the command line did not give them.

    ``given``: the destinations set on the command line; an option in a mutually exclusive group with
    a given one (``--budget`` / ``--rollouts``) is not taken from the file either.
    """
    command = _command(parser.prog)
    dests = {a.dest for a in parser._actions}
    blocked = set(given)
    for group in parser._mutually_exclusive_groups:
        members = {a.dest for a in group._group_actions}
        if members & given:
            blocked |= members
    for path, value in _flat(config):
        if not _applies(path, command):
            continue
        dest, convert = OPTION_OF[path]
        if dest not in dests or dest in blocked:
            continue
        setattr(args, dest, convert(value) if convert else value)


def _command(prog: str) -> str:
    """``"dip simulate"`` -> ``"simulate"``."""
    parts = prog.split()
    return parts[1] if len(parts) > 1 else ""


def _applies(path: str, command: str) -> bool:
    """Whether field ``path`` configures ``command`` (a command's own section only applies to it)."""
    section = path.split(".")[0]
    return section not in COMMAND_SECTIONS.values() or COMMAND_SECTIONS.get(command) == section


def resolved_config(config: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    """``config`` with the values the command actually ran with (file and flags merged)."""
    data = config.model_dump()
    command = _command(getattr(args, "prog_name", ""))
    for path, (dest, convert) in OPTION_OF.items():
        if not hasattr(args, dest) or convert is not None or not _applies(path, command):
            continue
        if command == "train" and path == "workload.microbatches":
            continue  # dip train's micro-batches are train.microbatches
        section, _, name = path.rpartition(".")
        target = data[section] if section else data
        target[name] = getattr(args, dest)
    for path, flag in (
        ("parallel.sequence_parallel", "no_sequence_parallel"),
        ("parallel.distributed_optimizer", "no_distributed_optimizer"),
        ("planner.baselines", "no_baselines"),
    ):
        if hasattr(args, flag):
            section, name = path.split(".")
            data[section][name] = not getattr(args, flag)
    return ExperimentConfig.model_validate(data)


def write_resolved(config: ExperimentConfig, path: str) -> None:
    """Write ``config`` as YAML to ``path`` (atomically)."""
    write_atomic(
        path,
        "# the resolved configuration of this run (dip ... --config FILE reruns it)\n"
        + yaml.safe_dump(config.model_dump(), sort_keys=False),
    )


def defaults_yaml() -> str:
    """A complete, commented example configuration with every default."""
    lines = [
        "# DIP experiment configuration: `dip plan|simulate|train|bench --config FILE`.",
        "# Flags given on the command line override these values; null means the default named.",
    ]

    def emit(model: BaseModel, indent: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                lines.append("")
                lines.append(f"{indent}{name}:  # {type(value).__doc__.strip().splitlines()[0]}")
                emit(value, indent + "  ")
                continue
            text = yaml.safe_dump({name: value}, default_flow_style=True, width=math.inf).strip()
            text = text[1:-1] if text.startswith("{") else text
            lines.append(f"{indent}{text}  # {field.description}")

    emit(ExperimentConfig(), "")
    return "\n".join(lines) + "\n"


def config_path_beside(output: str) -> str:
    """Where the resolved configuration of a run that writes ``output`` goes."""
    stem, _ = os.path.splitext(output)
    return f"{stem}.config.yaml"
