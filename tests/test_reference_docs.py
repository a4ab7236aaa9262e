"""The generated references in docs/reference match the code (regenerate: python -m dip.cli.reference)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dip.cli.reference import cli_reference, config_reference

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference"


@pytest.mark.parametrize("name,generate", [("cli.md", cli_reference), ("config.md", config_reference)])
def test_generated_reference_is_current(name, generate):
    committed = (DOCS / name).read_text()
    assert committed == generate(), f"docs/reference/{name} is out of date: run `python -m dip.cli.reference`"
