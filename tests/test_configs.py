"""Every config of conf/ composes and instantiates; schemas reject misspelled and mistyped keys."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
)
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import enhanced_dm
from enhanced_dm.cli import config_dir, register_schemas, schema_from_signature
from enhanced_dm.errors import ConfigError
from enhanced_dm.transforms.registry import GENE_NORMALIZATIONS
from tests.helpers import shared_data

CONF = config_dir()
PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@contextmanager
def composed(overrides: list[str], output_dir: Path) -> Iterator[DictConfig]:
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield compose("config", overrides=[*overrides, f"output_dir={output_dir}"])


def test_the_config_tree_is_the_checkouts_conf() -> None:
    assert (CONF / "config.yaml").is_file()
    for group in ("datamodule", "normalization", "data", "model", "trainer", "callbacks", "logger"):
        assert options(group), f"conf/{group}/ has no options"


def test_default_config_composes_and_instantiates(tmp_path: Path) -> None:
    with composed([], tmp_path) as cfg:
        assert cfg.datamodule.normalization_type == "z_score"
        assert cfg.datamodule.cell_type_key == "cell_type"
        datamodule = instantiate(cfg.datamodule)
        model = instantiate(cfg.model)
        callbacks = [instantiate(node) for node in cfg.callbacks.values()]
        loggers = [instantiate(node) for node in cfg.logger.values()]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert isinstance(datamodule, enhanced_dm.BaseEnhancedDataModule)
    assert isinstance(model, L.LightningModule)
    assert isinstance(trainer, L.Trainer)
    assert any(isinstance(c, enhanced_dm.NormalizationStatsCallback) for c in callbacks)
    assert Path(trainer.default_root_dir) == tmp_path


@pytest.mark.parametrize("option", options("normalization"))
def test_every_normalization_sets_up_the_datamodule(option: str, tmp_path: Path) -> None:
    with composed([f"normalization={option}"], tmp_path) as cfg:
        node = cfg.datamodule
    normalization = node.normalization_type
    if normalization != "none" and normalization not in GENE_NORMALIZATIONS:
        with pytest.raises(InstantiationException) as raised:
            instantiate(node)
        assert isinstance(raised.value.__cause__, ConfigError)
        assert f"unknown normalization_type '{normalization}'" in str(raised.value)
        pytest.skip(f"normalization {normalization!r} is not implemented yet")
    datamodule = instantiate(node, progress=False)
    datamodule.setup("fit")
    batch = datamodule.normalize(next(iter(datamodule.train_dataloader())))
    assert batch["x_ng"].shape == (cfg.datamodule.batch_size, datamodule.n_genes)
    assert torch.isfinite(batch["x_ng"]).all()


@pytest.mark.parametrize("option", options("datamodule"))
def test_every_datamodule_config_instantiates(option: str, tmp_path: Path) -> None:
    with composed([f"datamodule={option}"], tmp_path) as cfg:
        datamodule = instantiate(cfg.datamodule)
    assert isinstance(datamodule, L.LightningDataModule)


def test_every_exported_datamodule_has_a_config() -> None:
    targets = {
        get_class(OmegaConf.load(CONF / "datamodule" / f"{option}.yaml")["_target_"])
        for option in options("datamodule")
    }
    for name in enhanced_dm.__all__:
        member = getattr(enhanced_dm, name)
        if inspect.isclass(member) and issubclass(member, L.LightningDataModule):
            assert member in targets, f"add conf/datamodule/<name>.yaml for {name}"


@pytest.mark.parametrize("option", options("data"))
def test_every_data_config_instantiates(option: str, tmp_path: Path) -> None:
    overrides = [f"data={option}"]
    if option == "path":
        overrides.append(f"data.path={shared_data('singlecell/wu2020_tcells_counts.h5ad')}")
        overrides += ["datamodule.cell_type_key=cell_type", "datamodule.batch_key=batch"]
    if option == "soma":
        tiledbsoma_io = pytest.importorskip("tiledbsoma.io")
        uri = str(tmp_path / "soma")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tiledbsoma_io.from_h5ad(uri, str(shared_data(PBMC)), "RNA", X_layer_name="raw")
        overrides += [f"data.uri={uri}", "datamodule.cell_type_key=cell_type"]
    with composed(overrides, tmp_path) as cfg:
        data = instantiate(cfg.data)
        datamodule = instantiate(cfg.datamodule, progress=False)
    assert data is not None
    datamodule.setup("fit")
    assert datamodule.n_genes > 0
    assert "cell_type" in datamodule.categories


@pytest.mark.parametrize("option", options("model"))
def test_every_model_config_instantiates(option: str, tmp_path: Path) -> None:
    with composed([f"model={option}"], tmp_path) as cfg:
        model = instantiate(cfg.model)
    assert isinstance(model, L.LightningModule)


@pytest.mark.parametrize("option", options("trainer"))
def test_every_trainer_config_instantiates(option: str, tmp_path: Path) -> None:
    with composed([f"trainer={option}"], tmp_path) as cfg:
        node = cfg.trainer
    if node.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    trainer = instantiate(node, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize("option", options("callbacks"))
def test_every_callbacks_config_instantiates(option: str, tmp_path: Path) -> None:
    with composed([f"callbacks={option}"], tmp_path) as cfg:
        callbacks = [instantiate(node) for node in (cfg.callbacks or {}).values()]
    assert all(isinstance(callback, L.Callback) for callback in callbacks)


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_config_instantiates(option: str, tmp_path: Path) -> None:
    if option in ("tensorboard", "many"):
        pytest.importorskip("tensorboard")
    with composed([f"logger={option}"], tmp_path) as cfg:
        loggers = [instantiate(node) for node in (cfg.logger or {}).values()]
    assert loggers
    assert all(Path(logger.save_dir) == tmp_path for logger in loggers)


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes_and_instantiates(option: str, tmp_path: Path) -> None:
    with composed([f"experiment={option}"], tmp_path) as cfg:
        instantiate(cfg.datamodule)
        instantiate(cfg.model)
        instantiate(cfg.trainer, logger=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("datamodule.batch_sie=3", "Key 'batch_sie' not in 'BaseEnhancedDataModuleConfig'"),
        (
            "datamodule.batch_size=abc",
            "Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ("datamodule.per_cell_normalization=maybe", "Value 'maybe' is not a valid bool"),
        ("model.dropout=high", "Value 'high' of type 'str' could not be converted to Float"),
        ("model.hidden_dims=[64,wide]", "Value 'wide' of type 'str' could not be converted"),
        ("trainer.max_epochs=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
        ("trainer.max_epoch=3", "Key 'max_epoch' not in 'TrainerConfig'"),
    ],
)
def test_schemas_reject_unknown_and_mistyped_overrides(
    override: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigCompositionException) as raised, composed([override], tmp_path):
        pass
    text = f"{raised.value} {raised.value.__cause__}"
    assert message in text


def test_unknown_normalization_names_the_choices(tmp_path: Path) -> None:
    with (
        pytest.raises(MissingConfigException, match="normalization/zscore"),
        composed(["normalization=zscore"], tmp_path),
    ):
        pass


def test_schema_types_follow_the_signature() -> None:
    def target(
        count: int,
        ratio: float = 0.5,
        name: str | None = None,
        mode: Literal["a", "b"] = "a",
        widths: tuple[int, ...] = (1, 2),
        either: int | float = 1,
        mapping: dict[str, Any] | None = None,
    ) -> None:
        del count, ratio, name, mode, widths, either, mapping

    schema = schema_from_signature(target)
    config = OmegaConf.structured(schema)
    assert OmegaConf.is_missing(config, "count")
    assert config.ratio == 0.5 and config.mode == "a" and list(config.widths) == [1, 2]
    config.name = None
    config.either = 2.5  # a union stays untyped (int and float mean different things to Lightning)
    with pytest.raises(Exception, match="could not be converted to Float"):
        config.ratio = "x"
    with pytest.raises(Exception, match="could not be converted to Integer"):
        config.widths = [1, "y"]
    assert config._target_.endswith("target")


@pytest.mark.parametrize("name", options("datamodule"))
def test_datamodule_yaml_values_pass_the_option_declarations(name: str) -> None:
    """The YAML, the Hydra schema and the constructor share one declaration: every key of a
    conf/datamodule file is a declared option, and its value passes that option's checks."""
    from enhanced_dm.options import validate_options

    node = OmegaConf.to_container(
        OmegaConf.load(CONF / "datamodule" / f"{name}.yaml"), resolve=False
    )
    assert isinstance(node, dict)
    target = get_class(node["_target_"])
    declared = {option.name for option in target.declared_options()}
    values = {k: v for k, v in node.items() if k not in ("_target_", "defaults", "data")}
    assert set(values) <= declared, f"{name}.yaml: {sorted(set(values) - declared)} undeclared"
    validate_options(target.declared_options(), values, f"conf/datamodule/{name}.yaml")
    schema = schema_from_signature(target)
    fields = set(schema.__dataclass_fields__) - {
        "_target_",
        "_convert_",
        "data",
        "components",
        "cfg",
    }
    assert fields == declared


def test_the_command_picks_the_groups_a_datamodule_needs() -> None:
    from enhanced_dm.cli import with_datamodule_groups

    assert with_datamodule_groups(["datamodule=temporal"]) == [
        "datamodule=temporal",
        "data=hsmm_timecourse",
    ]
    chosen = ["datamodule=temporal", "data=path", "data.path=x.h5ad"]
    assert with_datamodule_groups(chosen) == chosen
    assert with_datamodule_groups(["datamodule=base"]) == ["datamodule=base"]


def test_the_temporal_config_runs_on_the_bundled_time_course(tmp_path: Path) -> None:
    with composed(["datamodule=temporal", "data=hsmm_timecourse"], tmp_path) as cfg:
        datamodule = instantiate(cfg.datamodule)
    datamodule.setup("fit")
    batch = datamodule.normalize(next(iter(datamodule.train_dataloader())))
    assert batch["time_step_n"].max() == 3 and datamodule.n_time_steps == 4
    assert torch.isfinite(batch["fast_response_ng"]).all()
