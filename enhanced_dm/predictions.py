"""The table ``enhanced-dm predict`` writes beside ``predictions.pt``: one row per cell, keyed
by the cell's obs name and file, so a scanpy user joins it to ``adata.obs`` in one line::

    table = pd.read_csv("predictions.csv", index_col="obs_name", dtype={"obs_name": str})
    adata.obs = adata.obs.join(table[table["file"] == "cells.h5ad"])

Columns: ``obs_name``, ``file`` (the input the cell came from, as the store names it: the path as
given, or ``<AnnData #i>``), ``cell_index_n`` (the row across all inputs), then the classifier's
``predicted_label`` and one ``prob_<class>`` per class, or the embedding's ``emb_0`` ...
``emb_{d-1}``. Rows are sorted by ``cell_index_n``. Obs names may repeat across files (several
files often share barcodes), hence the ``file`` column. CSV, because every tool reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from enhanced_dm.data.store import CellStore

__all__ = [
    "UnsupportedPredictions",
    "cell_origins",
    "class_names",
    "prediction_table",
    "write_prediction_table",
]

logger = logging.getLogger(__name__)


class UnsupportedPredictions(ValueError):
    """The outputs of ``predict_step`` are not one row per cell of a known kind."""


def cell_origins(store: CellStore, cells: np.ndarray) -> pd.DataFrame:
    """``obs_name`` and ``file`` of the store's global rows ``cells`` (``cell_index_n``), in the
    order given: the row's source is found from the store's ``offsets``."""
    cells = np.asarray(cells, dtype=np.int64)
    source_of = np.searchsorted(store.offsets, cells, side="right") - 1
    obs_names = np.empty(len(cells), dtype=object)
    for index, source in enumerate(store.sources):
        mine = source_of == index
        local = cells[mine] - store.offsets[index]
        obs_names[mine] = source.obs.index.astype(str).to_numpy()[local]
    files = np.array([source.name for source in store.sources], dtype=object)[source_of]
    return pd.DataFrame({"obs_name": obs_names, "file": files})


def class_names(datamodule: Any, model: Any) -> list[str] | None:
    """Names of a classifier's classes, in the order of its ``prob_nc`` columns: the DataModule's
    category map of the label (``cell_type_n`` -> ``categories["cell_type"]``; after a
    checkpoint's restore these are the training categories), else the model's ``class_names``;
    None for a model without ``label_key``."""
    hparams = getattr(model, "hparams", {})
    label_key = hparams.get("label_key")
    if label_key is None:
        return None
    categories = getattr(datamodule, "categories", None) or {}
    names = categories.get(label_key.removesuffix("_n")) or hparams.get("class_names")
    return [str(name) for name in names] if names else None


def _per_cell(outputs: Mapping[str, torch.Tensor], key: str, n_cells: int, ndim: int) -> np.ndarray:
    values = outputs[key]
    if values.ndim != ndim or values.shape[0] != n_cells:
        raise UnsupportedPredictions(
            f"{key} has shape {tuple(values.shape)}; expected {ndim}-D with one row per cell"
        )
    return values.detach().cpu().numpy()


def prediction_table(
    outputs: Mapping[str, torch.Tensor],
    store: CellStore,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per predicted cell, sorted by ``cell_index_n`` (see the module docstring).

    ``outputs`` are the merged ``predict_step`` outputs: ``cell_index_n`` with ``prob_nc`` (and
    ``pred_n``) of a classifier, or ``z_nd`` of an embedding model. ``class_names`` name the
    ``prob_nc`` columns (``class_<j>`` when None or of another length). Raises
    :class:`UnsupportedPredictions` for other outputs (e.g. sequence batches' ``cell_index_ns``).
    """
    if "cell_index_n" not in outputs or outputs["cell_index_n"].ndim != 1:
        raise UnsupportedPredictions(
            f"the predictions have no 1-D cell_index_n (keys: {sorted(outputs)})"
        )
    cells = outputs["cell_index_n"].detach().cpu().numpy().astype(np.int64)
    order = np.argsort(cells, kind="stable")
    table = cell_origins(store, cells[order]).assign(cell_index_n=cells[order])
    if "prob_nc" in outputs:
        prob_nc = _per_cell(outputs, "prob_nc", len(cells), 2)[order]
        names = list(class_names or [])
        if len(names) != prob_nc.shape[1]:
            names = [f"class_{j}" for j in range(prob_nc.shape[1])]
        pred_n = (
            _per_cell(outputs, "pred_n", len(cells), 1)[order]
            if "pred_n" in outputs
            else prob_nc.argmax(axis=1)
        )
        columns = {"predicted_label": np.asarray(names, dtype=object)[pred_n]}
        columns |= {f"prob_{name}": prob_nc[:, j] for j, name in enumerate(names)}
    elif "z_nd" in outputs:
        z_nd = _per_cell(outputs, "z_nd", len(cells), 2)[order]
        columns = {f"emb_{j}": z_nd[:, j] for j in range(z_nd.shape[1])}
    else:
        raise UnsupportedPredictions(
            f"the predictions hold neither prob_nc nor z_nd (keys: {sorted(outputs)})"
        )
    return pd.concat([table, pd.DataFrame(columns)], axis=1)


def write_prediction_table(
    outputs: Mapping[str, torch.Tensor], datamodule: Any, model: Any, path: Path
) -> Path | None:
    """Write :func:`prediction_table` of the DataModule's store as CSV at ``path``; return it.

    Outputs the table cannot describe are logged (the ``.pt`` file still holds them) and give
    None, so ``predict`` does not fail after its work is done.
    """
    try:
        table = prediction_table(outputs, datamodule.store, class_names(datamodule, model))
    except UnsupportedPredictions as reason:
        logger.warning("no prediction table: %s", reason)
        return None
    table.to_csv(path, index=False)
    return path
