"""Resuming: the saved state's version and where the train sampler really is in the fit loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from enhanced_dm.errors import ConfigError
from enhanced_dm.fitting.driver import fitted_states
from enhanced_dm.fitting.fit_or_load import STATE_VERSION

if TYPE_CHECKING:
    from enhanced_dm.components.base import ComponentSet
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.base import Pipeline

__all__ = [
    "check_same_genes",
    "check_state_version",
    "fit_loop_position",
    "next_epoch",
    "restore_pending",
    "saved_state",
]


def saved_state(
    pipeline: Pipeline,
    store: CellStore,
    split: Mapping[str, np.ndarray],
    sampler_state: dict[str, Any] | None,
    components: ComponentSet,
) -> dict[str, Any]:
    """A DataModule's state: fitted statistics, gene list, category maps, split, sampler
    position, components' constants and their running state (never in the statistics cache)."""
    return {
        "version": STATE_VERSION,
        "fitted": fitted_states(pipeline),
        "var_names": list(store.var_names),
        "categories": dict(store.categories),
        "split": {name: torch.from_numpy(indices) for name, indices in split.items()},
        "sampler": sampler_state,
        "components": components.state_dict(),
        "running": components.running_state(),
    }


def restore_pending(pending_state: Mapping[str, Any] | None, trainer: Any) -> bool:
    """Lightning is about to restore the DataModule from a checkpoint (``ckpt_path``): it calls
    ``setup`` before ``load_state_dict``, so fitting in ``setup`` would be wasted work; it is
    deferred to the first dataloader (the checkpoint's statistics arrive before it)."""
    return (
        pending_state is None
        and trainer is not None
        and getattr(trainer, "ckpt_path", None) is not None
    )


def check_state_version(state_dict: Mapping[str, Any]) -> None:
    """Refuse a DataModule state written by another state version."""
    if state_dict.get("version") != STATE_VERSION:
        raise ConfigError(
            f"cannot restore DataModule state version {state_dict.get('version')}; "
            f"this enhanced-dm writes version {STATE_VERSION}"
        )


def check_same_genes(state_dict: Mapping[str, Any], var_names: Sequence[str]) -> None:
    """Refuse a state saved over another gene list (the fitted statistics would not fit)."""
    if list(state_dict["var_names"]) != list(var_names):
        raise ConfigError(
            "cannot restore: the checkpoint's gene list differs from this data's "
            f"({len(state_dict['var_names'])} vs {len(var_names)} genes); pass the same "
            "data and genes= as the run that wrote it"
        )


def fit_loop_position(sampler_state: dict[str, Any], trainer: Any) -> dict[str, Any]:
    """The sampler's state with the epoch and batches done taken from a fitting trainer.

    The sampler's own count runs ahead of training when DataLoader workers prefetch, so under a
    fitting trainer the epoch and the batches done come from the fit loop's progress (what
    Lightning restores): a checkpoint saved after the epoch's last batch (batch end, validation
    end or epoch end) resumes at the start of the next epoch, as Lightning does.
    """
    if trainer is None or trainer.state.fn != "fit":
        return sampler_state
    # Lightning types both trackers as their base class; they count processed items too.
    epoch_progress: Any = trainer.fit_loop.epoch_progress.current
    batch_progress: Any = trainer.fit_loop.epoch_loop.batch_progress.current
    epoch, done = epoch_progress.processed, 0
    if epoch_progress.started > epoch_progress.processed:  # inside an epoch
        done = batch_progress.processed
        if done >= trainer.num_training_batches:
            epoch, done = epoch + 1, 0
    return {**sampler_state, "epoch": epoch, "start_batch": done}


def next_epoch(trainer: Any, previous_sampler: Any) -> int:
    """The epoch a new train sampler starts at: the one the fit loop runs next (a DataLoader with
    workers draws from the sampler as soon as it is iterated, before Lightning's ``set_epoch``),
    else the previous sampler's, else 0."""
    if trainer is not None:
        progress: Any = trainer.fit_loop.epoch_progress.current
        return int(progress.processed)  # the epoch Lightning's set_epoch will name
    return previous_sampler.epoch if previous_sampler is not None else 0
