"""A DataModule class declared from its options: signature, type hints, stats methods."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

from enhanced_dm.components.base import Component
from enhanced_dm.datamodules.options import BASE_OPTIONS
from enhanced_dm.options import Option, declared_signature, merge_options

__all__ = ["declare_datamodule", "options_of"]

_LEADING = [inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
_TRAILING = [
    inspect.Parameter(
        "components", inspect.Parameter.KEYWORD_ONLY, default=(), annotation=Sequence[Component]
    ),
    inspect.Parameter("cfg", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Any),
]


def options_of(cls: Any) -> list[Option]:
    """A DataModule class's options: its components' (``component_classes``), its own
    (``datamodule_options``), then the base options (one declaration per name), with its
    ``option_defaults`` applied (a default for an unknown name is a ``TypeError``)."""
    merged = merge_options(
        [*(c.options for c in cls.component_classes), cls.datamodule_options, BASE_OPTIONS]
    )
    unknown = set(cls.option_defaults) - {option.name for option in merged}
    if unknown:
        raise TypeError(f"{cls.__name__}.option_defaults names unknown options {unknown}")
    return [
        dataclasses.replace(option, default=cls.option_defaults[option.name])
        if option.name in cls.option_defaults
        else option
        for option in merged
    ]


def declare_datamodule(cls: Any, base: type | None = None) -> None:
    """Give ``cls`` the constructor signature of its declared options and a
    ``get_<name>_stats()`` method per component class.

    A subclass without its own ``__init__`` gets one that forwards to ``base`` (so the signature
    is its own, not the base's). The Hydra schema is generated from that signature, so a
    DataModule is fully described by ``component_classes``.
    """
    if base is not None and "__init__" not in cls.__dict__:

        def __init__(self: Any, data: Any, **options: Any) -> None:
            super(cls, self).__init__(data, **options)

        cls.__init__ = __init__
    declared_signature(cls.__init__, cls.declared_options(), _LEADING, _TRAILING)
    for component_class in cls.component_classes:
        method = f"get_{component_class.name}_stats"
        if not hasattr(cls, method):
            setattr(cls, method, _stats_method(component_class.name))


def _stats_method(name: str) -> Any:
    """``get_<name>_stats()`` of a DataModule built with the component called ``name``."""

    def get_stats(self: Any) -> dict[str, Any]:
        return self.component_stats(name)

    get_stats.__name__ = f"get_{name}_stats"
    get_stats.__doc__ = (
        f"The {name} component's report plus the running summary of its outputs "
        "(:meth:`~enhanced_dm.datamodules.base.BaseEnhancedDataModule.component_stats`)."
    )
    return get_stats
