"""Read regulatory networks (regulator -> target edge lists, signed or not) from TSV/CSV files."""

from __future__ import annotations

import math
import os
from collections.abc import Hashable

import numpy as np
import pandas as pd

from enhanced_dm.annotations._lines import read_lines, refuse_repeat
from enhanced_dm.annotations._table import (
    Row,
    find_column,
    require_cells,
    sniff_delimiter,
    split_rows,
)
from enhanced_dm.errors import AnnotationFileError

__all__ = ["load_network", "network_from_frame", "read_network"]

_SIGNS = {"+": 1.0, "+1": 1.0, "1": 1.0, "-": -1.0, "-1": -1.0}


def read_network(
    path: str | os.PathLike[str],
    *,
    source_column: str = "source",
    target_column: str = "target",
    weight_column: str | None = None,
    sign_column: str | None = None,
) -> pd.DataFrame:
    """Read an edge list as a DataFrame with columns source, target and weight (float64).

    Rules (any break raises :class:`~enhanced_dm.errors.AnnotationFileError` with the line):

    - tab- or comma-separated (sniffed from the first line, a tab wins); UTF-8, plain or gzip
      (``.tsv.gz``), any line ending, blank lines skipped;
    - the first line is a header; columns are found by name, case-insensitively, in any order,
      and the others (``interaction``, ``p.value``, ...) are ignored. The bundled PathwayCommons
      file (``source, interaction, target``) reads with the defaults; PROGENy
      (``gene, pathway, weight, p.value``) with ``source_column="pathway", target_column="gene"``;
    - weight: ``weight_column`` if given (it must exist), else a column named ``weight`` if there
      is one, else 1.0 for every edge (an unsigned network). Weights must be finite numbers;
    - sign: ``sign_column`` if given, else a column named ``sign`` if there is one; its values
      (``+``, ``-``, ``1``, ``-1``, ``+1``) multiply the weight; a ``mor`` column (decoupler's
      mode of regulation, DoRothEA / CollecTRI) is a number that multiplies the weight too;
    - without ``source`` / ``target`` columns, PROGENy's layout (``pathway``, ``gene``) is read as
      pathway -> gene;
    - source and target must be non-empty; an edge listed twice is an error naming both lines
      (summing or dropping one would change the network silently). Self-loops are kept.
    """
    lines = read_lines(path)
    delimiter = sniff_delimiter(path, lines[0])
    header, *data_rows = split_rows(path, lines, delimiter)
    names = {cell.casefold() for cell in header.cells}
    if source_column == "source" and "source" not in names and {"pathway", "gene"} <= names:
        source_column, target_column = "pathway", "gene"  # PROGENy's layout
    source_index = find_column(path, header, source_column, "source")
    target_index = find_column(path, header, target_column, "target")
    mor_index = _optional_column(path, header, None, "mor")
    weight_index = _optional_column(path, header, weight_column, "weight")
    sign_index = _optional_column(path, header, sign_column, "sign")
    needed = max(source_index, target_index, weight_index, sign_index, mor_index) + 1

    first_line_of: dict[Hashable, int] = {}
    edges: list[tuple[str, str]] = []
    weights: list[float] = []
    for row in data_rows:
        require_cells(path, row, needed, delimiter, "an edge")
        edge = (row.cells[source_index], row.cells[target_index])
        for role, name in (("source", edge[0]), ("target", edge[1])):
            if not name:
                raise AnnotationFileError(path, f"empty {role}", line=row.number)
        refuse_repeat(path, first_line_of, edge, f"edge {edge[0]!r} -> {edge[1]!r}", row.number)
        edges.append(edge)
        weight = _weight(path, row, weight_index) if weight_index >= 0 else 1.0
        if sign_index >= 0:
            weight *= _sign(path, row, sign_index)
        if mor_index >= 0:
            weight *= _weight(path, row, mor_index)
        weights.append(weight)
    if not edges:
        raise AnnotationFileError(path, "the table holds no edges, only a header")
    frame = pd.DataFrame(edges, columns=["source", "target"])
    frame["weight"] = np.asarray(weights, dtype=np.float64)
    return frame


def _optional_column(
    path: str | os.PathLike[str], header: Row, name: str | None, default: str
) -> int:
    """The column ``name`` (which must exist), else the column ``default`` if any, else -1."""
    if name is not None:
        return find_column(path, header, name, default)
    names = [cell.casefold() for cell in header.cells]
    return names.index(default) if default in names else -1


def _weight(path: str | os.PathLike[str], row: Row, index: int) -> float:
    text = row.cells[index]
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise AnnotationFileError(path, f"weight {text!r} is not a finite number", line=row.number)
    return weight


def _sign(path: str | os.PathLike[str], row: Row, index: int) -> float:
    text = row.cells[index]
    if text not in _SIGNS:
        raise AnnotationFileError(
            path, f"sign {text!r} is not one of {sorted(_SIGNS)}", line=row.number
        )
    return _SIGNS[text]


def network_from_frame(frame: pd.DataFrame, where: str = "the network DataFrame") -> pd.DataFrame:
    """A DataFrame network (``source``, ``target``, optional ``weight`` and ``mor``; decoupler's
    layout) as source, target, weight (float64), checked as files are."""
    columns = {str(column).casefold(): column for column in frame.columns}
    if "source" not in columns and {"pathway", "gene"} <= set(columns):
        columns["source"], columns["target"] = columns["pathway"], columns["gene"]
    missing = [name for name in ("source", "target") if name not in columns]
    if missing:
        raise AnnotationFileError(
            where, f"columns {missing} are missing; found {list(map(str, frame.columns))}"
        )
    out = pd.DataFrame(
        {
            "source": frame[columns["source"]].astype(str).str.strip().to_numpy(),
            "target": frame[columns["target"]].astype(str).str.strip().to_numpy(),
        }
    )
    weight = np.ones(len(frame))
    for name in ("weight", "mor"):
        if name in columns:
            values = pd.to_numeric(frame[columns[name]], errors="coerce").to_numpy(np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                raise AnnotationFileError(
                    where, f"{name} of row {int(bad[0])} is not a finite number"
                )
            weight = weight * values
    out["weight"] = weight
    _refuse_empty_and_repeats(out, where)
    return out


def _refuse_empty_and_repeats(frame: pd.DataFrame, where: str) -> None:
    empty = np.flatnonzero((frame["source"] == "") | (frame["target"] == ""))
    if len(empty):
        raise AnnotationFileError(where, f"row {int(empty[0])} has an empty source or target")
    repeated = frame.duplicated(["source", "target"], keep=False)
    if repeated.any():
        rows = np.flatnonzero(repeated.to_numpy())[:2].tolist()
        edge = tuple(frame.iloc[rows[0]][["source", "target"]])
        raise AnnotationFileError(
            where,
            f"edge {edge[0]!r} -> {edge[1]!r} is listed twice (rows {rows}); expected "
            "each edge once (summing or dropping one would change the network silently)",
        )
    if frame.empty:
        raise AnnotationFileError(where, "the network holds no edges")


def load_network(network: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    """A regulatory network as source, target, weight, from any of its forms.

    * a TSV/CSV file, plain or gzipped (:func:`read_network`);
    * a pandas DataFrame (:func:`network_from_frame`);
    * a ``.pt`` file, read with ``torch.load(weights_only=True)`` (no code runs from it), holding
      either a dict ``{"sources": [...], "targets": [...], "weight": tensor or list}`` (one entry
      per edge) or ``{"adjacency": tensor (regulators x genes), "regulators": [...],
      "genes": [...]}``, whose non-zero entries are the edges.

    Duplicate edges are refused in every form.
    """
    if isinstance(network, pd.DataFrame):
        return network_from_frame(network)
    path = os.fspath(network)
    if not path.endswith(".pt"):
        return read_network(path)
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise AnnotationFileError(path, "file not found") from error
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise AnnotationFileError(
            path, f"not a network saved with torch.save ({type(error).__name__}: {error})"
        ) from error
    if isinstance(content, dict) and {"sources", "targets"} <= set(content):
        weight = content.get("weight", np.ones(len(content["sources"])))
        frame = pd.DataFrame(
            {
                "source": list(map(str, content["sources"])),
                "target": list(map(str, content["targets"])),
                "weight": np.asarray(torch.as_tensor(weight), dtype=np.float64),
            }
        )
        return network_from_frame(frame, path)
    if isinstance(content, dict) and {"adjacency", "regulators", "genes"} <= set(content):
        adjacency = torch.as_tensor(content["adjacency"]).to_dense().double().numpy()
        regulators, genes = list(map(str, content["regulators"])), list(map(str, content["genes"]))
        if adjacency.shape != (len(regulators), len(genes)):
            raise AnnotationFileError(
                path,
                f"adjacency has shape {adjacency.shape}; expected (regulators, genes) = "
                f"({len(regulators)}, {len(genes)})",
            )
        rows, columns = np.nonzero(adjacency)
        frame = pd.DataFrame(
            {
                "source": [regulators[i] for i in rows],
                "target": [genes[j] for j in columns],
                "weight": adjacency[rows, columns],
            }
        )
        return network_from_frame(frame, path)
    keys = sorted(content) if isinstance(content, dict) else type(content).__name__
    raise AnnotationFileError(
        path,
        f"holds {keys}; expected a dict with sources/targets/weight or adjacency/regulators/genes",
    )
