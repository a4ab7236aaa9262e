"""Gradient comparison shared by the model tests."""

from __future__ import annotations

import torch


def assert_grads_equal(got: dict, want: dict, rtol: float = 1e-10) -> None:
    """Same parameter names, and every gradient equal to ``rtol`` (atol scaled by the largest gradient)."""
    assert set(got) == set(want)
    scale = max(g.abs().max().item() for g in want.values())
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=rtol, atol=1e-13 * scale, msg=name)
