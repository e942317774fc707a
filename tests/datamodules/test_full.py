"""FullVirtualCellDataModule: the composition equals its parts, key by key, on the bundled PBMCs
(S_score, a numeric obs column, stands in for time; the cell-cycle phase is the memory state)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from enhanced_dm import (
    ConfigError,
    FullVirtualCellDataModule,
    HierarchicalDataModule,
    MemoryDataModule,
    MultiScaleDataModule,
    RegulatoryDataModule,
    ResourceDataModule,
    StochasticDataModule,
    TemporalDataModule,
    datasets,
)
from enhanced_dm.datamodules.base import BaseEnhancedDataModule

COMMON: dict[str, Any] = dict(
    batch_size=128,
    val_fraction=0.2,
    progress=False,
    seed=0,
    cell_type_key="cell_type",
    time_key="S_score",
    state_key="phase",
    cellular_scale_dim=16,
    normalization_type="z_score",
    per_cell_normalization=True,
)
COMMON_BASE: dict[str, Any] = dict(batch_size=128, val_fraction=0.2, progress=False, seed=0)
PARTS: dict[type[BaseEnhancedDataModule], list[str]] = {
    HierarchicalDataModule: ["pathway_scores_np", "compartment_fraction_nk", "compartment_x_nk"],
    MultiScaleDataModule: ["x_molecular_nd", "x_pathway_nd", "x_cellular_nd"],
    RegulatoryDataModule: ["tf_activity_nr"],
    ResourceDataModule: ["covariates_nc", "allocation_na", "efficiency_n", "resource_nd"],
    TemporalDataModule: [
        "time_n",
        "time_step_n",
        "time_embedding_nd",
        "fast_response_ng",
        "slow_response_ng",
        "previous_state_ng",
    ],
    StochasticDataModule: ["noise_nd", "noise_strength_n"],
    MemoryDataModule: ["memory_state_n", "memory_type_n", "memory_embedding_nd", "memory_md"],
}


def build(cls: type[BaseEnhancedDataModule], **options: Any) -> Any:
    """``cls`` on the bundled PBMCs with the options of COMMON it declares, set up."""
    declared = {option.name for option in cls.declared_options()}
    chosen = {k: v for k, v in {**COMMON, **options}.items() if k in declared}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = cls(datasets.pbmc68k(), **chosen)
        dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def full() -> FullVirtualCellDataModule:
    return build(FullVirtualCellDataModule)


def val_batch(dm: BaseEnhancedDataModule) -> dict[str, torch.Tensor]:
    return dm.normalize(dm.store.read(dm.split["val"][:64]), stage="val")


def test_the_full_batch_equals_each_part_alone(full: FullVirtualCellDataModule) -> None:
    ours = val_batch(full)
    weights = full.weighting.step("stream_weights").weights()
    for cls, keys in PARTS.items():
        theirs = val_batch(build(cls))
        if cls not in (TemporalDataModule, MemoryDataModule):  # alone they own the gene-wise step
            torch.testing.assert_close(
                ours["x_ng"], theirs["x_ng"], rtol=0, atol=0, msg=cls.__name__
            )
        for key in keys:
            expected = theirs[key]
            if key in weights:
                expected = expected * torch.tensor(weights[key], dtype=torch.float64).to(
                    expected.dtype
                )
            torch.testing.assert_close(ours[key], expected, rtol=1e-6, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("owner", "part", "keys"),
    [
        ("memory", MemoryDataModule, ["memory_embedding_nd", "memory_neighbor_similarity_nj"]),
        ("temporal", TemporalDataModule, ["fast_response_ng", "time_embedding_nd"]),
    ],
)
def test_a_component_as_the_gene_wise_owner_equals_it_alone(
    owner: str, part: type[BaseEnhancedDataModule], keys: list[str]
) -> None:
    ours = val_batch(build(FullVirtualCellDataModule, gene_wise=owner))
    theirs = val_batch(build(part))
    for key in ["x_ng", *keys]:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-6, msg=key)
    assert "x_memory_ng" not in ours if owner == "memory" else "x_memory_ng" in ours


def test_streams_carry_equal_total_variance_on_the_train_split(
    full: FullVirtualCellDataModule,
) -> None:
    step = full.weighting.step("stream_weights")
    batch = full.normalize(full.store.read(full.split["train"]), stage="val")
    variances = {key: float(batch[key].double().var(0).sum()) for key in step.widths}
    target = float(step.total_variance_s.mean())
    for key, variance in variances.items():
        assert variance == pytest.approx(target, rel=1e-4), key
    fixed = build(FullVirtualCellDataModule, stream_weights={"resource_nd": 2.0})
    assert fixed.get_weighting_stats()["weights"]["resource_nd"] == 2.0
    plain = build(FullVirtualCellDataModule, adaptive_weighting=False)
    assert set(plain.get_weighting_stats()["weights"].values()) == {1.0}
    with pytest.raises(ValueError, match="not context streams"):
        build(FullVirtualCellDataModule, stream_weights={"x_ng": 2.0})


def test_enabled_chooses_and_missing_inputs_switch_components_off() -> None:
    with pytest.warns(UserWarning, match=r"switched off temporal \(the data have no obs column"):
        dm = FullVirtualCellDataModule(datasets.pbmc68k(), progress=False, val_fraction=0.2)
        dm.setup("fit")
    assert "temporal" not in [c.name for c in dm.components]
    assert dm.get_temporal_stats() == {"enabled": False, "reason": dm.switched_off["temporal"]}
    with pytest.raises(ConfigError, match="enabled names \\['temporal'\\], but the data"):
        FullVirtualCellDataModule(datasets.pbmc68k(), enabled=["pathway", "temporal"]).setup()
    with pytest.raises(ConfigError, match="unknown components \\['pathways'\\]"):
        FullVirtualCellDataModule(datasets.pbmc68k(), enabled=["pathways"])
    with pytest.raises(ConfigError, match="pathway scale"):
        FullVirtualCellDataModule(datasets.pbmc68k(), enabled=["multiscale"])
    small = build(FullVirtualCellDataModule, enabled=["pathway", "resource"])
    assert [c.name for c in small.components] == ["pathway", "resource", "weighting"]
    batch = val_batch(small)
    assert {"pathway_scores_np", "resource_nd"} <= set(batch) and "tf_activity_nr" not in batch
    with pytest.raises(ConfigError, match="gene_wise='temporal'"):
        build(FullVirtualCellDataModule, enabled=["pathway"], gene_wise="temporal")


def test_comprehensive_stats_nest_every_component(full: FullVirtualCellDataModule) -> None:
    val_batch(full)
    stats = full.get_comprehensive_stats()
    names = ["pathway", "compartment", "multiscale", "regulatory", "resource", "temporal"]
    names += ["stochastic", "memory", "weighting"]
    assert list(stats) == ["normalization", *names]
    assert stats["multiscale"]["x_molecular_nd"]["cells_seen"] > 0
    assert stats["weighting"]["weights"] == full.weighting.step("stream_weights").weights()
    for getter in ("pathway", "temporal", "regulatory", "memory", "stochastic", "resource"):
        assert isinstance(getattr(full, f"get_{getter}_stats")(), dict)
    assert isinstance(full.get_multiscale_stats(), dict)
    restored = FullVirtualCellDataModule(datasets.pbmc68k(), **COMMON)
    restored.load_state_dict(full.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        restored.setup("fit")
    rows = full.split["val"][:32]
    ours = full.normalize(full.store.read(rows), stage="val")
    again = restored.normalize(restored.store.read(rows), stage="val")
    for key in ours:
        torch.testing.assert_close(again[key], ours[key], msg=key)


def test_weights_are_identity_on_keys_that_are_not_streams(full: FullVirtualCellDataModule) -> None:
    assert not {"x_ng", "counts_ng", "noise_nd", "memory_embedding_nd"} & set(
        full.weighting.step("stream_weights").widths
    )
    assert np.isfinite(list(full.weighting.step("stream_weights").weights().values())).all()


def test_the_weighting_component_contract() -> None:
    """StreamWeighting through check_component, watching a hierarchical DataModule's streams."""
    from enhanced_dm.components.weighting import StreamWeighting
    from tests.contract import check_component

    def make_dm(components: Any) -> BaseEnhancedDataModule:
        dm = HierarchicalDataModule(datasets.pbmc68k(), components=components, **COMMON_BASE)
        for component in components:
            component.watch(dm.components)
        return dm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = check_component(StreamWeighting, make_dm)
    weights = dm.component_stats("weighting")["weights"]
    assert set(weights) == {"pathway_scores_np", "compartment_x_nk"}
    assert all(np.isfinite(list(weights.values())))
