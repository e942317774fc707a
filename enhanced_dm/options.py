"""Options declared once: name, type, default, constraint and help, for constructors and Hydra.

A DataModule's or component's options are a tuple of :class:`Option`. The same declaration
validates the constructor's keywords (:func:`validate_options`), gives the constructor its
signature and type hints (:func:`declared_signature`), which the Hydra schema is generated from
(``enhanced_dm.cli.schema_from_signature``), and is what the ``conf/datamodule`` YAML files are
checked against in the tests. An option name means one thing everywhere: components that take the
same option (``gene_symbol_key``) declare it identically and receive the same value.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from enhanced_dm.errors import ConfigError

__all__ = [
    "BATCH_KEY",
    "CELL_TYPE_KEY",
    "Option",
    "at_least",
    "declared_signature",
    "greater_than",
    "in_interval",
    "merge_options",
    "validate_options",
]


@dataclass(frozen=True)
class Option:
    """One constructor option.

    ``check(value)`` returns True when the value is acceptable beyond its type; ``expected`` says
    in words what is accepted (it ends up in the :class:`~enhanced_dm.errors.ConfigError`).
    ``annotation`` is the Python type (``int``, ``float | None``, ``Literal[...]``): values are
    checked against it before ``check`` runs.
    """

    name: str
    default: Any
    annotation: Any
    doc: str = ""
    check: Callable[[Any], bool] | None = None
    expected: str = ""


BATCH_KEY = Option("batch_key", None, str | None, "obs column of the batch (batch_n codes).")
CELL_TYPE_KEY = Option(
    "cell_type_key", None, str | None, "obs column of the cell type (cell_type_n)."
)
"""The DataModule's obs keys, declared once: components that read them take the same option."""


def at_least(minimum: float) -> tuple[Callable[[Any], bool], str]:
    """(check, words) for a number >= ``minimum`` (None passes: optional options)."""
    return (lambda value: value is None or value >= minimum), f">= {minimum}"


def greater_than(minimum: float) -> tuple[Callable[[Any], bool], str]:
    """(check, words) for a number > ``minimum`` (None passes)."""
    return (lambda value: value is None or value > minimum), f"> {minimum}"


def in_interval(
    low: float, high: float, *, closed_low: bool = True, closed_high: bool = True
) -> tuple[Callable[[Any], bool], str]:
    """(check, words) for a number in an interval (None passes)."""

    def check(value: Any) -> bool:
        if value is None:
            return True
        above = value >= low if closed_low else value > low
        below = value <= high if closed_high else value < high
        return bool(above and below)

    words = f"in {'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
    return check, words


def _matches(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a simple annotation (scalars, unions, Literal, sequences, paths)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(member, value) for member in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:  # numpy integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:  # any real number but a bool
        return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if annotation is str:
        return isinstance(value, str)
    if annotation is os.PathLike:
        return isinstance(value, os.PathLike)
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
        if isinstance(value, str) or not isinstance(value, Iterable):
            return False
        return not args or len(set(args)) > 1 or all(_matches(args[0], item) for item in value)
    if origin in (dict, Mapping, typing.Mapping):
        return isinstance(value, Mapping)
    return True  # other annotations (classes, callables) are left to the code that uses them


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return f"one of {list(typing.get_args(annotation))}"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def validate_options(
    declared: Sequence[Option], given: Mapping[str, Any], owner: str
) -> dict[str, Any]:
    """Every declared option's value (given, else its default), checked; unknown names refused.

    Raises :class:`~enhanced_dm.errors.ConfigError` naming ``owner``, the option, the value and
    what was expected.
    """
    by_name = {option.name: option for option in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ConfigError(
            f"{owner} got unknown option(s) {unknown}; expected some of {sorted(by_name)}"
        )
    values: dict[str, Any] = {}
    for option in declared:
        value = given.get(option.name, option.default)
        if not _matches(option.annotation, value):
            raise ConfigError(
                f"{owner}: option {option.name}={value!r} has the wrong type; expected "
                f"{_describe(option.annotation)}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{owner}: option {option.name}={value!r} is invalid; expected a finite number"
            )
        if option.check is not None and value is not None:
            try:
                ok = bool(option.check(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(
                    f"{owner}: option {option.name}={value!r} is invalid; expected "
                    f"{option.expected}"
                )
        values[option.name] = value
    return values


def merge_options(groups: Iterable[Sequence[Option]]) -> list[Option]:
    """The union of several declarations, in first-seen order.

    The same name declared twice must be the same option (type and default): an option name
    means one thing everywhere, so a clash is a :class:`~enhanced_dm.errors.ConfigError`.
    """
    merged: dict[str, Option] = {}
    for group in groups:
        for option in group:
            seen = merged.get(option.name)
            if seen is None:
                merged[option.name] = option
            elif (seen.annotation, seen.default) != (option.annotation, option.default):
                raise ConfigError(
                    f"option {option.name!r} is declared twice with different types or defaults "
                    f"({seen.annotation}={seen.default!r} vs {option.annotation}="
                    f"{option.default!r}); an option name must mean one thing everywhere"
                )
    return list(merged.values())


def declared_signature(
    function: Callable[..., Any],
    declared: Sequence[Option],
    leading: Sequence[inspect.Parameter] = (),
    trailing: Sequence[inspect.Parameter] = (),
    keyword_only: bool = True,
) -> None:
    """Give ``function`` (a ``**options`` constructor) the explicit signature and type hints of
    its declared options, so IDEs, ``help()`` and the Hydra schema see every option."""
    kind = (
        inspect.Parameter.KEYWORD_ONLY if keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
    )
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *leading]
    parameters += [
        inspect.Parameter(option.name, kind, default=option.default, annotation=option.annotation)
        for option in declared
    ]
    parameters += list(trailing)
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {
        **{parameter.name: parameter.annotation for parameter in [*leading, *trailing]},
        **{option.name: option.annotation for option in declared},
        "return": None,
    }
