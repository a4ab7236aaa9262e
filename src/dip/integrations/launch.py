"""The rank entry point of ``dip train``: the runtime's trainer with this layer's model and data loaders.

``python -m dip.integrations.launch CONFIG`` is what :func:`dip.runtime.launch.launch` starts per rank
when given :func:`worker_command`; :func:`train_any` runs one rank in the calling process (under
torchrun). Either way ``--model`` may be a preset, a spec file, a factory or a checkpoint folder, and
``--data`` a dataset the model reads.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from dip.integrations.loader import load_model, open_data
from dip.runtime.launch import worker_main
from dip.runtime.trainer import TrainConfig, train

__all__ = ["train_any", "worker_command"]


def worker_command() -> list[str]:
    """The command that starts one rank (the config file's path is appended by the launcher)."""
    return [sys.executable, "-m", "dip.integrations.launch"]


def _single_threaded_tokenizers() -> None:
    # the data loader's workers fork after a tokenizer may have run: the tokenizers' own threads stay off
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def train_any(cfg: TrainConfig) -> dict[str, Any] | None:
    """:func:`dip.runtime.trainer.train` on this rank with checkpoints, factories and datasets."""
    _single_threaded_tokenizers()
    return train(cfg, load=load_model, open_data=open_data)


def main(config_path: str) -> int:
    _single_threaded_tokenizers()
    return worker_main(config_path, load=load_model, open_data=open_data)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
