"""Errors the CLI turns into one-line messages with exit code 2."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError


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


def validation_message(exc: ValidationError, fields_of: Callable[[str], list[str]] | None = None) -> str:
    """One line for a pydantic validation error: the missing or unknown fields, or the first bad field
    with its value and what is allowed. ``fields_of(section)`` lists a section's valid fields (shown
    for an unknown field)."""
    errors = exc.errors()

    def path(err) -> str:
        return ".".join(str(x) for x in err["loc"] if x != "[key]") or "(top level)"

    missing = [path(e) for e in errors if e["type"] == "missing"]
    if missing:
        return f"missing fields: {', '.join(missing)}"
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown and fields_of is not None:
        section = ".".join(str(x) for x in unknown[0]["loc"][:-1])
        where = f" of {section}" if section else ""
        return f"unknown field {path(unknown[0])!r}; valid fields{where}: {', '.join(fields_of(section))}"
    if unknown:
        return f"unknown fields: {', '.join(path(e) for e in unknown)}"
    err = errors[0]
    return f"field {path(err)!r}: {err.get('input')!r} is not allowed ({err['msg'].lower()})"
