"""Errors the CLI turns into one-line messages with exit code 2."""

from __future__ import annotations


class BadInput(ValueError):
    """Invalid user input (unknown name, impossible configuration, malformed file).

    The message is one line that names the field and, where there is a finite set, the allowed values.
    """


class Infeasible(BadInput):
    """No plan satisfies the constraints (e.g. memory); the message names the rank and the shortfall."""


def choices_error(field: str, value: object, allowed) -> BadInput:
    """``BadInput`` for a value outside a finite set, listing the allowed values."""
    allowed = list(allowed)
    return BadInput(f"unknown {field} {value!r}; valid {field}s: {', '.join(map(str, allowed))}")


def positive_int(field: str, value: int | None, minimum: int = 1) -> int:
    """``value`` as an int, or :class:`BadInput` naming ``field`` when it is missing or below ``minimum``."""
    if value is None or int(value) < minimum:
        raise BadInput(f"{field} must be an integer >= {minimum}, got {value}")
    return int(value)
