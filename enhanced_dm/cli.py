"""The ``enhanced-dm`` console script: ``enhanced-dm fit|validate|test|predict|stats [overrides...]``
and ``enhanced-dm prepare SOURCE TARGET`` (the optional layout conversion, no Hydra).

The first word is the task; the rest are Hydra overrides of the config tree in ``conf/`` (shipped
inside the wheel as ``enhanced_dm/conf``), e.g. ``enhanced-dm fit normalization=none
trainer.max_epochs=5`` or ``enhanced-dm stats -m normalization=z_score,none``. A run instantiates
the ``datamodule``, ``model``, ``callbacks``, ``logger`` and ``trainer`` nodes and calls the
Trainer method of the task; ``stats`` only fits the normalization and writes the report of
:mod:`enhanced_dm.plots`. Errors of the ``EnhancedDMError`` family end the command with their
message and exit status 1, without a traceback.

Every ``_target_`` node of the datamodule, model and trainer groups has a schema generated from
its constructor's signature (:func:`register_schemas`), so a misspelled or mistyped override fails
when the config is composed, before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TASKS",
    "config_dir",
    "main",
    "prepare",
    "register_schemas",
    "run",
    "schema_from_signature",
]

TASKS = ("fit", "validate", "test", "predict", "stats")
USAGE = f"""usage: enhanced-dm {{{",".join(TASKS)}}} [hydra overrides...] [-m] [--cfg job] [--help]

  fit       train the model (default: cell types of the bundled PBMC data), then write the
            normalization statistics report
  validate  evaluate on the validation split (give ckpt_path=...)
  test      evaluate on the test split (give ckpt_path=...)
  predict   run the model over every cell and save predictions.pt and a table keyed by
            obs name, predictions.csv (give ckpt_path=...)
  stats     only fit the normalization and write its report (JSON + PNG plots)
  prepare   SOURCE.h5ad TARGET.h5ad [--layer NAME ...] [--overwrite]: copy with X (and the
            named layers) stored contiguous and uncompressed, for fast direct backed reads of a
            compressed file

examples:
  enhanced-dm fit
  enhanced-dm fit normalization=none trainer.max_epochs=5
  enhanced-dm stats data=path data.path=cells.h5ad datamodule.batch_key=batch
  enhanced-dm fit -m normalization=z_score,none
  enhanced-dm fit --help      (the config groups and their choices)
  enhanced-dm prepare atlas.h5ad atlas.mappable.h5ad
"""


def config_dir() -> Path:
    """The config tree: ``enhanced_dm/conf`` in an installed wheel, else ``conf/`` of the checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "conf", package_dir.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    from enhanced_dm.errors import ConfigError

    raise ConfigError(
        f"no Hydra config tree found (looked for {package_dir / 'conf'} and "
        f"{package_dir.parent / 'conf'}); reinstall enhanced-dm"
    )


# ------------------------------------------------------------------------------------ schemas
_SCALARS = (bool, int, float, str)


def _omegaconf_type(annotation: Any, default: Any) -> Any:
    """The closest type OmegaConf can check: a scalar (optional), ``list[scalar]``, or ``Any``.

    Unions of several types (``int | float``, ``str | Path``) stay ``Any``: coercing them would
    change meaning (Lightning reads ``limit_train_batches=2`` and ``2.0`` differently).
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        inner = _omegaconf_type(members[0], default) if len(members) == 1 else Any
        return typing.Optional[inner] if optional and inner is not Any else inner  # noqa: UP045
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return str if all(isinstance(value, str) for value in values) else Any
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
        if len(set(args)) == 1 and args[0] in _SCALARS:
            return list[args[0]]  # type: ignore[valid-type]
        return Any
    if origin in (dict, Mapping, typing.Mapping):
        return dict[str, Any]
    if annotation in _SCALARS:
        return typing.Optional[annotation] if default is None else annotation  # noqa: UP045
    return Any


def _field_default(default: Any) -> Any:
    """A dataclass field for a constructor default (mutable and odd defaults become plain data)."""
    if default is inspect.Parameter.empty:
        return dataclasses.field(default=dataclasses.MISSING)
    if isinstance(default, list | tuple):
        return dataclasses.field(default_factory=functools.partial(list, default))
    if isinstance(default, dict):
        return dataclasses.field(default_factory=functools.partial(dict, default))
    if default is None or isinstance(default, _SCALARS):
        return dataclasses.field(default=default)
    return dataclasses.field(default=str(default))


def schema_from_signature(
    target: Callable[..., Any], defaults: Mapping[str, Any] | None = None
) -> type:
    """A dataclass with ``_target_`` and one typed field per keyword of ``target``'s constructor.

    Generated, so it never drifts from the code; ``defaults`` replaces some field defaults (the
    DataModules' ``data`` defaults to the ``${data}`` node). ``_convert_="all"`` hands plain lists
    and dicts, not OmegaConf containers, to the constructor.
    """
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # annotations naming optional packages cannot always be resolved
        hints = {}
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=f"{target.__module__}.{target.__qualname__}")),
        ("_convert_", str, dataclasses.field(default="all")),
    ]
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = (defaults or {}).get(name, parameter.default)
        annotation = _omegaconf_type(hints.get(name, Any), default)
        fields.append((name, annotation, _field_default(default)))
    return dataclasses.make_dataclass(f"{target.__qualname__}Config", fields, kw_only=True)


def _datamodule_classes() -> dict[str, type]:
    """Class name -> class of every DataModule the package exports or defines in datamodules/."""
    import importlib
    import pkgutil

    import lightning as L

    import enhanced_dm
    import enhanced_dm.datamodules

    modules = [enhanced_dm] + [
        importlib.import_module(f"enhanced_dm.datamodules.{info.name}")
        for info in pkgutil.iter_modules(enhanced_dm.datamodules.__path__)
    ]
    found: dict[str, type] = {}
    for module in modules:
        for name, member in vars(module).items():
            if (
                inspect.isclass(member)
                and issubclass(member, L.LightningDataModule)
                and member.__module__.startswith("enhanced_dm.")
            ):
                found[name] = member
    return found


def register_schemas() -> None:
    """Store the schemas as ``schema/<group>/<ClassName>`` in Hydra's ConfigStore.

    DataModules: every LightningDataModule exported by ``enhanced_dm`` or defined in a module of
    ``enhanced_dm.datamodules`` (a new one only needs its ``conf/datamodule/<name>.yaml``); models: every LightningModule in ``enhanced_dm.models``;
    trainer: ``lightning.Trainer``.
    """
    import lightning as L
    from hydra.core.config_store import ConfigStore

    import enhanced_dm.models

    store = ConfigStore.instance()
    for name, member in _datamodule_classes().items():
        node = schema_from_signature(member, defaults={"data": "${data}"})
        store.store(group="schema/datamodule", name=name, node=node)
    for name in enhanced_dm.models.__all__:
        member = getattr(enhanced_dm.models, name)
        if inspect.isclass(member) and issubclass(member, L.LightningModule):
            store.store(group="schema/model", name=name, node=schema_from_signature(member))
    store.store(group="schema/trainer", name="Trainer", node=schema_from_signature(L.Trainer))


# -------------------------------------------------------------------------------------- run
def _instantiate_all(nodes: Any) -> list[Any]:
    """Instantiate every ``_target_`` node of a group like ``callbacks`` or ``logger``."""
    from hydra.utils import instantiate

    if not nodes:
        return []
    return [instantiate(node) for node in nodes.values() if node and "_target_" in node]


def run(cfg: Any) -> float | None:
    """Instantiate the config's objects and do its ``task``; return the checkpoint metric if any."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from enhanced_dm.plots import write_stats_report
    from enhanced_dm.predictions import write_prediction_table

    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.datamodule)
    if cfg.task == "stats":
        datamodule.setup("fit")
        written = write_stats_report(datamodule, output_dir / "stats", cfg.report_max_cells)
        _print_summary(cfg.task, started, output_dir, None, written)
        return None

    model = instantiate(cfg.model)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.task != "fit" and cfg.ckpt_path is None:
        print(f"enhanced-dm {cfg.task}: no ckpt_path given, so the model is untrained")
    check_checkpoint(cfg.ckpt_path)
    if cfg.task == "fit":
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    elif cfg.task == "validate":
        trainer.validate(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    elif cfg.task == "test":
        trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    elif cfg.task == "predict":
        outputs = trainer.predict(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path) or []
        merged = {key: torch.cat([batch[key] for batch in outputs]) for key in outputs[0]}
        # Under DDP each rank predicts its own shard of the cells (cell_index_n says which).
        stem = "predictions" if trainer.world_size == 1 else f"predictions_{trainer.global_rank}"
        torch.save(merged, output_dir / f"{stem}.pt")
        write_prediction_table(merged, datamodule, model, output_dir / f"{stem}.csv")
    report: dict[str, Path] | None = None
    if cfg.task == "fit" and cfg.stats_report:
        if trainer.world_size == 1:
            datamodule.reset_normalization_stats()
            report = write_stats_report(datamodule, output_dir / "stats", cfg.report_max_cells)
        elif trainer.is_global_zero:
            # Each rank holds a shard of the cells; the report is made by `enhanced-dm stats`.
            print("enhanced-dm fit: no statistics report under DDP; run `enhanced-dm stats`")
    if trainer.is_global_zero:
        _print_summary(cfg.task, started, output_dir, trainer, report)
    monitor = getattr(trainer.checkpoint_callback, "monitor", None)
    value = trainer.callback_metrics.get(monitor) if monitor else None
    return float(value) if value is not None else None


def check_checkpoint(path: str | None) -> None:
    """Refuse a missing, empty, truncated or damaged checkpoint before any work, in one line.

    Lightning's names (``"last"``, ``"best"``, ...) pass: Lightning resolves them. A checkpoint is
    a torch zip archive; every member's CRC is verified (one read of the file).
    """
    import zipfile

    from enhanced_dm.errors import ConfigError

    if path is None or path in ("last", "best", "hpc", "registry"):
        return
    file = Path(path)
    expected = "expected a checkpoint written by `enhanced-dm fit` (a .ckpt file)"
    if not file.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file; {expected}")
    if file.stat().st_size == 0:
        raise ConfigError(f"ckpt_path={path}: the file is empty; {expected}")
    try:
        with zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ConfigError(
            f"ckpt_path={path}: truncated or not a checkpoint ({error}); {expected}"
        ) from None
    if damaged is not None:
        raise ConfigError(f"ckpt_path={path}: damaged (bad CRC in {damaged}); {expected}")


def _print_summary(
    task: str, started: float, output_dir: Path, trainer: Any, report: dict[str, Path] | None
) -> None:
    lines = [f"enhanced-dm {task}: done in {time.perf_counter() - started:.1f} s"]
    if trainer is not None:
        metrics = {
            key: float(value)
            for key, value in sorted(trainer.callback_metrics.items())
            if not key.startswith("normalization/") and value.numel() == 1
        }
        lines += [f"  {key} = {value:.4f}" for key, value in metrics.items()]
    lines.append(f"  run directory: {output_dir}")
    for logger in trainer.loggers if trainer is not None else []:
        lines.append(f"  {type(logger).__name__} logs: {logger.log_dir}")
    if task == "fit":
        for callback in trainer.checkpoint_callbacks:
            kind = "best" if callback.monitor else "last"
            if callback.best_model_path:
                lines.append(f"  {kind} checkpoint: {callback.best_model_path}")
    lines += [f"  predictions: {path}" for path in sorted(output_dir.glob("predictions*.pt"))]
    lines += [f"  prediction table: {path}" for path in sorted(output_dir.glob("predictions*.csv"))]
    if report is not None:
        lines.append(f"  statistics: {report['statistics']}")
        lines.append(f"  per-gene table: {report['genes']}")
        lines += [f"  plot: {path}" for key, path in report.items() if path.suffix == ".png"]
    print("\n".join(lines), flush=True)


def _enhanced_dm_error(exc: BaseException) -> BaseException | None:
    """The ``EnhancedDMError`` behind ``exc`` (Hydra wraps constructor errors), if there is one."""
    from enhanced_dm.errors import EnhancedDMError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, EnhancedDMError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _task(cfg: Any) -> float | None:
    from hydra.errors import InstantiationException

    try:
        return run(cfg)
    except Exception as exc:
        error = _enhanced_dm_error(exc)
        if error is None and isinstance(exc, InstantiationException) and not _full_error():
            # A config that names a wrong argument (e.g. `+datamodule.batch_sie=3`): Hydra's
            # message names the target, the argument and the config key.
            error = exc
        if error is None:
            raise
        print(f"enhanced-dm {cfg.task}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _full_error() -> bool:
    import os

    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _split_task(arguments: list[str]) -> tuple[str, list[str]]:
    """``fit a=1`` -> ``("fit", ["a=1"])``; ``a=1 task=fit`` (a DDP child's command) likewise."""
    first = arguments[0]
    if "=" not in first and not first.startswith("-"):
        return first, arguments[1:]
    given = [argument for argument in arguments if argument.startswith("task=")]
    if len(given) == 1:
        return given[0].removeprefix("task="), [a for a in arguments if a is not given[0]]
    return arguments[0], arguments[1:]


def prepare(arguments: Sequence[str]) -> None:
    """``enhanced-dm prepare SOURCE TARGET [--layer NAME ...] [--overwrite]``."""
    import argparse

    from enhanced_dm.data.prepare import prepare_h5ad
    from enhanced_dm.errors import EnhancedDMError

    parser = argparse.ArgumentParser(
        prog="enhanced-dm prepare",
        description="Copy an .h5ad with X (and the named layers) stored contiguous and "
        "uncompressed, so that backed=True reads it with direct positional reads. The source "
        "is only read.",
    )
    parser.add_argument("source", help="the .h5ad to copy")
    parser.add_argument("target", help="where to write the copy")
    parser.add_argument("--layer", action="append", default=[], help="also rewrite this layer")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target")
    args = parser.parse_args(list(arguments))
    started = time.perf_counter()
    try:
        target = prepare_h5ad(
            args.source,
            args.target,
            matrices=["X", *(f"layers/{layer}" for layer in args.layer)],
            overwrite=args.overwrite,
        )
    except EnhancedDMError as error:
        print(f"enhanced-dm prepare: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(f"wrote {target} in {time.perf_counter() - started:.1f} s", flush=True)


GROUPS_FOR_DATAMODULE = {"temporal": {"data": "hsmm_timecourse"}}
"""Config groups a DataModule needs when the command line picks it but not them: the default
data (bundled PBMCs) hold no time course. Hydra cannot switch the data group from a datamodule
config (the override would have to come after it, and it sets datamodule options the override
must not overwrite), so the command adds the override."""


def with_datamodule_groups(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus ``<group>=<option>`` for each group of :data:`GROUPS_FOR_DATAMODULE`
    that the chosen DataModule needs and the overrides do not set."""
    chosen = [item.split("=", 1)[1] for item in overrides if item.startswith("datamodule=")]
    if len(chosen) != 1 or chosen[0] not in GROUPS_FOR_DATAMODULE:
        return list(overrides)
    added = [
        f"{group}={option}"
        for group, option in GROUPS_FOR_DATAMODULE[chosen[0]].items()
        if not any(item.startswith((f"{group}=", f"+{group}=", f"~{group}")) for item in overrides)
    ]
    return [*overrides, *added]


def _with_added(arguments: list[str], extra: list[str]) -> list[str]:
    """``arguments`` plus ``extra`` and the groups the chosen DataModule needs, placed with the
    user's overrides: Hydra's parser takes one run of overrides, so an override separated from
    the others by a flag (``... --cfg job task=fit``) would be refused."""
    added = [*extra, *with_datamodule_groups(arguments)[len(arguments) :]]
    first = next(
        (i for i, item in enumerate(arguments) if "=" in item and not item.startswith("-")),
        len(arguments),
    )
    return [*arguments[:first], *added, *arguments[first:]]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``enhanced-dm`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if arguments else 2)
    if arguments[0] == "prepare":
        prepare(arguments[1:])
        return
    task, overrides = _split_task(arguments)
    if task not in TASKS:
        print(f"enhanced-dm: unknown task {task!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)

    import hydra

    register_schemas()
    hydra_main = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    # The task travels as an override, so that the processes Lightning's DDP launcher starts (it
    # re-runs sys.argv) find it again.
    sys.argv = [sys.argv[0], *_with_added(overrides, [f"task={task}"])]
    hydra_main(_task)()


if __name__ == "__main__":
    main()
