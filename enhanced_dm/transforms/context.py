"""StepContext: where and when a batch is normalized, and the random numbers a step may draw."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from enhanced_dm.errors import ConfigError
from enhanced_dm.seeding import mix_seed, shift_right, signed, splitmix64, stream_id

__all__ = ["STAGES", "Stage", "StepContext", "trainer_stage"]

Stage = Literal["fit_stats", "train", "val", "test", "predict"]
STAGES: tuple[str, ...] = get_args(Stage)
_LIGHTNING_STAGES: dict[str, Stage] = {
    "train": "train",
    "sanity_check": "val",
    "validate": "val",
    "test": "test",
    "predict": "predict",
}


def trainer_stage(trainer: Any) -> Stage:
    """The stage of a Lightning trainer's running loop (sanity checks are ``"val"``); without a
    trainer, ``"predict"``."""
    stage = getattr(getattr(trainer, "state", None), "stage", None)
    return _LIGHTNING_STAGES.get(str(getattr(stage, "value", stage)), "predict")


@dataclass(frozen=True)
class StepContext:
    """The stage a batch is normalized for, and the coordinates its random draws are keyed by.

    ``stage``: ``"fit_stats"`` (the fitting passes, pipeline in ``eval()``), ``"train"``,
    ``"val"``, ``"test"`` or ``"predict"``. Augmentation and other randomness run only when
    :attr:`training`. ``epoch`` and ``batch_index`` are stamped into each batch by the data
    loader (the position of the batch in its epoch, on this rank), so the context, and every
    draw made from it, is the same with any number of workers and after a resume.
    """

    stage: Stage = "predict"
    seed: int = 0
    epoch: int = 0
    global_rank: int = 0
    batch_index: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {list(STAGES)}, got {self.stage!r}")

    @property
    def training(self) -> bool:
        """True in the train stage, the only one where augmentation and running updates happen."""
        return self.stage == "train"

    def generator(self, device: torch.device | str, stream: str) -> torch.Generator:
        """A generator on ``device`` seeded from (seed, epoch, rank, batch index, stream).

        One ``stream`` per component (its name), so adding a component never shifts another's
        draws; ranks, epochs and batches get unrelated seeds.
        """
        generator = torch.Generator(device=device)
        generator.manual_seed(
            mix_seed(self.seed, self.epoch, self.global_rank, self.batch_index, stream_id(stream))
        )
        return generator

    def keyed_uniform(self, keys_n: torch.Tensor, n_features: int, stream: str) -> torch.Tensor:
        """``(n, n_features)`` float32 uniforms in (0, 1), a fixed function of (seed, stream, key).

        For draws that must not change with the stage, the batch or the epoch: noise inputs at
        inference keyed by ``cell_index_n``, or per-group draws keyed by a group code.
        """
        base = signed(mix_seed(self.seed, stream_id(stream)))
        key_hash_n = splitmix64(keys_n.reshape(-1).to(torch.int64) ^ base)
        features_d = torch.arange(n_features, device=keys_n.device, dtype=torch.int64)
        bits_nd = shift_right(splitmix64(key_hash_n[:, None] + features_d[None, :]), 11)
        # 53 random bits -> (0, 1): the +0.5 keeps both ends open, as a logarithm needs.
        return ((bits_nd.to(torch.float64) + 0.5) * 2.0**-53).to(torch.float32)

    def keyed_normal(self, keys_n: torch.Tensor, n_features: int, stream: str) -> torch.Tensor:
        """``(n, n_features)`` standard normal float32 draws keyed like :meth:`keyed_uniform`
        (Box-Muller on two uniforms per value)."""
        uniform_n2d = self.keyed_uniform(keys_n, 2 * n_features, stream).to(torch.float64)
        radius = torch.sqrt(-2.0 * torch.log(uniform_n2d[:, :n_features]))
        angle = 2.0 * math.pi * uniform_n2d[:, n_features:]
        return (radius * torch.cos(angle)).to(torch.float32)
