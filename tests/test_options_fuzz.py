"""Fuzz the DataModule constructors over their whole declared option space: every refusal is an
EnhancedDMError naming the option, never a TypeError or a torch traceback later."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enhanced_dm import BaseEnhancedDataModule, EnhancedDMError, HierarchicalDataModule
from enhanced_dm.options import Option, validate_options

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.text(max_size=4), max_size=3),
)


def plausible(option: Option) -> st.SearchStrategy[Any]:
    """Values of the option's own type (often out of range), or junk of another type."""
    annotation = option.annotation
    origin = typing.get_origin(annotation)
    if annotation is bool:
        own: st.SearchStrategy[Any] = st.booleans()
    elif annotation is int:
        own = st.integers(-5, 5000)
    elif annotation is float or annotation == (float | None):
        own = st.floats(-10, 1e5, allow_nan=False)
    elif origin is typing.Literal:
        own = st.sampled_from(typing.get_args(annotation))
    else:
        own = st.just(option.default)
    return st.one_of(own, st.just(option.default), JUNK)


def option_draws(cls: type[BaseEnhancedDataModule]) -> st.SearchStrategy[dict[str, Any]]:
    skip = {"stats_cache_dir", "genes", "obs_keys", "normalization_options"}  # paths / lists
    options = [o for o in cls.declared_options() if o.name not in skip]
    return st.fixed_dictionaries({}, optional={o.name: plausible(o) for o in options})


@pytest.mark.parametrize("cls", [BaseEnhancedDataModule, HierarchicalDataModule])
def test_constructor_refuses_only_with_enhanced_dm_errors(cls) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(option_draws(cls))
    def check(options: dict[str, Any]) -> None:
        try:
            dm = cls("unused.h5ad", **options)
        except EnhancedDMError:
            return
        # accepted: every value passed its declaration
        validate_options(cls.declared_options(), dict(dm.options), cls.__name__)

    check()
