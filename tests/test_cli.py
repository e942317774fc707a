"""The ``enhanced-dm`` command, run as a subprocess from a temporary directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from enhanced_dm.cli import main
from tests.helpers import REPO_ROOT

PLOTS = ("gene_mean_std.png", "value_distribution.png", "pipeline_steps.png", "groups.png")


def enhanced_dm(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the console script (or ``python -m enhanced_dm.cli`` where it is not installed)."""
    script = Path(sys.executable).with_name("enhanced-dm")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "enhanced_dm.cli"]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [*command, *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def run_directories(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.rglob(".hydra"))


def assert_report(directory: Path) -> dict:
    for name in ("normalization_stats.json", "gene_stats.tsv", *PLOTS):
        assert (directory / name).is_file(), f"{directory / name} is missing"
        assert (directory / name).stat().st_size > 0
    return json.loads((directory / "normalization_stats.json").read_text())


def test_stats_writes_the_report_and_says_where(tmp_path: Path) -> None:
    result = enhanced_dm("stats", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = run_directories(tmp_path / "outputs" / "stats")
    report = assert_report(run / "stats")
    assert f"statistics: {run / 'stats' / 'normalization_stats.json'}" in result.stdout
    assert report["cells_in_report"] == 700
    assert report["datamodule"]["normalization_type"] == "z_score"
    z_score = report["steps"]["z_score"]
    assert z_score["cells_seen"] == 700
    assert abs(z_score["mean"]) < 0.05 and abs(z_score["std"] - 1) < 0.05
    with (run / "stats" / "gene_stats.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 765 and rows[0]["gene"] == "HES4"
    assert not (run / "checkpoints").exists()


def test_fit_fast_dev_run_trains_and_writes_the_report(tmp_path: Path) -> None:
    result = enhanced_dm("fit", "trainer.fast_dev_run=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = run_directories(tmp_path / "outputs" / "fit")
    assert_report(run / "stats")
    assert "enhanced-dm fit: done" in result.stdout
    assert f"run directory: {run}" in result.stdout
    assert "val/acc" in result.stdout


def test_multirun_sweeps_normalizations(tmp_path: Path) -> None:
    result = enhanced_dm("stats", "-m", "normalization=z_score,none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = run_directories(tmp_path / "multirun" / "stats")
    assert [run.name for run in runs] == ["0_normalization=z_score", "1_normalization=none"]
    types = [assert_report(run / "stats")["datamodule"]["normalization_type"] for run in runs]
    assert types == ["z_score", "none"]


@pytest.mark.slow
def test_fit_then_resume_test_and_predict_from_the_checkpoints(tmp_path: Path) -> None:
    result = enhanced_dm("fit", "trainer.max_epochs=3", "stats_report=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = run_directories(tmp_path / "outputs" / "fit")
    metrics = list(csv.DictReader((run / "csv" / "version_0" / "metrics.csv").open()))
    assert sum(1 for row in metrics if row.get("val/acc")) == 3
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 2
    assert f"last checkpoint: {last}" in result.stdout
    assert "best checkpoint: " in result.stdout

    resumed = enhanced_dm(
        "fit", f"ckpt_path={last}", "trainer.max_epochs=4", "stats_report=false", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    tested = enhanced_dm("test", f"ckpt_path={last}", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "test/acc = " in tested.stdout
    predicted = enhanced_dm("predict", f"ckpt_path={last}", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    (predict_run,) = run_directories(tmp_path / "outputs" / "predict")
    predictions = torch.load(predict_run / "predictions.pt")
    assert sorted(predictions["cell_index_n"].tolist()) == list(range(700))
    assert predictions["prob_nc"].shape == (700, 10)


@pytest.mark.slow
@pytest.mark.ddp
def test_fit_with_two_gloo_ranks(tmp_path: Path) -> None:
    result = enhanced_dm("fit", "trainer=ddp", "trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "enhanced-dm fit: done" in result.stdout
    assert "no statistics report under DDP" in result.stdout
    (run,) = run_directories(tmp_path / "outputs" / "fit")
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("datamodule.batch_sie=3", "batch_sie"),
        ("datamodule.batch_size=many", "datamodule.batch_size"),
        ("normalization=zscore", "normalization/zscore"),
        pytest.param("+datamodule.batch_sie=3", "batch_sie", marks=pytest.mark.slow),
    ],
)
def test_invalid_overrides_fail_naming_them(override: str, named: str, tmp_path: Path) -> None:
    result = enhanced_dm("stats", override, cwd=tmp_path)
    assert result.returncode != 0
    assert named in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_enhanced_dm_errors_are_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = enhanced_dm("stats", "data=path", "data.path=missing.h5ad", cwd=tmp_path)
    assert result.returncode == 1
    assert "enhanced-dm stats: error: missing.h5ad: no such file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_constructor_errors_are_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = enhanced_dm("stats", "datamodule.normalization_type=zscore", cwd=tmp_path)
    assert result.returncode == 1
    assert "normalization_type='zscore' is invalid; expected one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_and_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    assert "usage: enhanced-dm {fit,validate,test,predict,stats}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as raised:
        main(["train"])
    assert raised.value.code == 2
    assert "unknown task 'train'" in capsys.readouterr().err


def test_an_installed_package_finds_its_own_conf(tmp_path: Path) -> None:
    """A wheel carries conf/ as enhanced_dm/conf (pyproject force-include); the CLI looks there."""
    site = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "enhanced_dm", site / "enhanced_dm")
    shutil.copytree(REPO_ROOT / "conf", site / "enhanced_dm" / "conf")
    code = "import enhanced_dm.cli as cli; print(cli.config_dir())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == site / "enhanced_dm" / "conf"


def test_prepare_writes_a_mappable_copy_and_refuses_to_overwrite(tmp_path: Path) -> None:
    from enhanced_dm.data import CellStore
    from tests.helpers import shared_data

    source = shared_data("singlecell/wu2020_tcells_counts.h5ad")
    target = tmp_path / "wu2020.h5ad"
    result = enhanced_dm("prepare", source, str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert CellStore(str(target), backed=True).sources[0].reads_directly
    again = enhanced_dm("prepare", source, str(target), cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists; pass overwrite=True" in again.stderr
    assert "Traceback" not in again.stderr


def test_a_datamodule_gets_the_groups_it_needs_even_before_a_flag(tmp_path: Path) -> None:
    result = enhanced_dm("fit", "datamodule=stochastic", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "normalization_type: pearson" in result.stdout
    result = enhanced_dm(
        "fit", "datamodule=stochastic", "normalization=robust", "--cfg", "job", cwd=tmp_path
    )
    assert "normalization_type: robust" in result.stdout
    result = enhanced_dm("fit", "datamodule=temporal", "--cfg", "job", cwd=tmp_path)
    assert "enhanced_dm.datasets.hsmm_timecourse" in result.stdout


def test_added_overrides_join_the_users_own_run_of_overrides() -> None:
    from enhanced_dm.cli import _with_added

    assert _with_added(["-m", "normalization=z_score,none"], ["task=stats"]) == [
        "-m",
        "task=stats",
        "normalization=z_score,none",
    ]
    assert _with_added(["datamodule=temporal", "--cfg", "job"], ["task=fit"]) == [
        "task=fit",
        "data=hsmm_timecourse",
        "datamodule=temporal",
        "--cfg",
        "job",
    ]
    assert _with_added(["--cfg", "job"], ["task=fit"]) == ["--cfg", "job", "task=fit"]


@pytest.mark.slow
@pytest.mark.parametrize("datamodule", ["multiscale", "full"])
def test_the_composed_datamodules_train_on_the_bundled_data(
    datamodule: str, tmp_path: Path
) -> None:
    result = enhanced_dm("fit", f"datamodule={datamodule}", "trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = run_directories(tmp_path / "outputs" / "fit")
    report = assert_report(run / "stats")
    assert "val/acc" in result.stdout
    assert {"molecular_scale", "cellular_scale"} <= set(report["steps"])
    if datamodule == "full":
        assert "switched off temporal" in result.stderr
