"""CellStore: many h5ad files (or AnnData objects) as one cell x gene matrix with aligned genes."""

from __future__ import annotations

import glob
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from enhanced_dm.annotations.matching import GeneMatcher
from enhanced_dm.data.soma_source import SomaSource
from enhanced_dm.data.sources import (
    RowBlock,
    Source,
    concat_row_blocks,
    open_source,
)
from enhanced_dm.errors import ConfigError, DataFileError

__all__ = ["CellStore", "DataInput", "ValueCheck", "check_values", "obs_keys"]

logger = logging.getLogger(__name__)
INT32_MAX = 2**31 - 1

# Backed files storing more values than this are sampled at setup; the rest is checked on read.
VALUE_CHECK_MAX_VALUES = 1_000_000
# Rows of a backed file whose column indices the setup check reads (in memory: every row).
STRUCTURE_CHECK_MAX_ROWS = 1024
_STRUCTURE_CHUNK = 4_000_000

# torch marks sparse CSR as beta on every construction; the layout is used on purpose here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

Dataset: TypeAlias = str | os.PathLike[str] | anndata.AnnData | SomaSource
DataInput: TypeAlias = Dataset | Sequence[Dataset]


def _expand_inputs(data: DataInput) -> list[Dataset]:
    """A path, a glob pattern, an AnnData, a SOMA experiment, or a list of those, as a flat
    list."""
    items: list[Dataset] = (
        [data] if isinstance(data, str | os.PathLike | anndata.AnnData | SomaSource) else list(data)
    )
    expanded: list[Dataset] = []
    for item in items:
        if isinstance(item, str) and glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise DataFileError(f"{item}: the pattern matches no file")
            expanded.extend(matches)
        else:
            expanded.append(item)
    if not expanded:
        raise DataFileError("no data given: expected a path, a list of paths or an AnnData")
    return expanded


def obs_keys(data: DataInput) -> set[str]:
    """The obs columns that every dataset of ``data`` has, read before a store is opened (a
    composition decides there which components the data can feed)."""
    keys: set[str] | None = None
    for index, item in enumerate(_expand_inputs(data)):
        source = open_source(item, backed=True, layer=None, index=index)
        try:
            columns = {str(column) for column in source.obs.columns}
        finally:
            source.close()
        keys = columns if keys is None else keys & columns
    return keys or set()


@dataclass
class ValueCheck:
    """What the setup-time value check of one source looked at and concluded.

    ``values_checked`` of ``values_stored`` stored values were read; ``complete`` means all of
    them (then the read path skips its own check for this source). ``integer`` says whether every
    checked value is a whole number.
    """

    source: str
    dtype: str
    values_checked: int
    values_stored: int | None
    complete: bool
    integer: bool
    minimum: float
    maximum: float = 0.0

    def describe(self) -> str:
        scope = "all" if self.complete else "a sample of"
        kind = "integers" if self.integer else "non-integer values"
        stored = "uncounted" if self.values_stored is None else f"{self.values_stored:,}"
        return (
            f"{self.source}: {scope} {self.values_checked:,} of {stored} stored "
            f"values checked ({self.dtype}): {kind}"
        )


class CellStore:
    """Rows of one or many datasets, read as CSR batches in one gene space.

    * ``genes``: the gene space (missing genes read as 0); default: the union of all files' genes
      in order of first appearance (``gene_join="outer"``) or their intersection
      (``gene_join="inner"``).
    * ``obs_columns``: batch name -> obs column, e.g. ``{"batch": "sample"}`` gives ``batch_n``.
      Text/categorical columns become int64 codes over a frozen category list (``categories``;
      missing values are ``-1``); numeric columns become float32.
    * ``total_counts_n`` is each cell's library size over ALL genes of its file (or the obs column
      ``total_counts_key``), taken before gene alignment.
    * ``counts``: ``True`` requires integer values, ``False`` accepts any non-negative values,
      ``"auto"`` decides from the values checked and records the verdict in ``is_counts`` (and in
      words in ``counts_verdict``, logged at INFO).

    Input checks, all at construction (so in ``setup``, never mid-epoch), each a
    :class:`~enhanced_dm.errors.DataFileError` naming the file: unreadable / non-h5ad / truncated
    files and unusable X (see :func:`~enhanced_dm.data.sources.open_source`), no cells, no genes,
    duplicate var_names, missing obs columns (the available ones are listed), and the values:
    negative, NaN/inf, or non-integer with ``counts=True``. In-memory matrices are checked whole;
    backed files storing at most ``VALUE_CHECK_MAX_VALUES`` values are read whole, larger ones are
    sampled (16 evenly spaced spans) and every block read afterwards is checked in :meth:`read`
    (a few vectorized numpy passes over the block's non-zeros): when ``setup("fit")`` fits
    statistics, its pass over the train split thus verifies every train cell before training;
    other cells of a sampled file are verified when first read. ``value_checks`` records what was
    checked.

    Duplicate obs_names are allowed: rows are identified by position (``cell_index_n``), and
    several files often share barcodes. Duplicate var_names are an error (a gene would be
    ambiguous).
    """

    def __init__(
        self,
        data: DataInput,
        *,
        backed: bool = False,
        layer: str | None = None,
        genes: Sequence[str] | None = None,
        gene_join: Literal["outer", "inner"] = "outer",
        missing_genes: Literal["error", "zeros"] = "error",
        obs_columns: Mapping[str, str] | None = None,
        total_counts_key: str | None = None,
        counts: bool | Literal["auto"] = "auto",
        categories: Mapping[str, Sequence[str]] | None = None,
        max_open_files: int = 64,
        direct_read: bool = True,
    ) -> None:
        if gene_join not in ("outer", "inner"):
            raise ConfigError(f"gene_join must be 'outer' or 'inner', got {gene_join!r}")
        self.sources = [
            open_source(item, backed=backed, layer=layer, index=index, direct_read=direct_read)
            for index, item in enumerate(_expand_inputs(data))
        ]
        self.backed = backed
        self.max_open_files = max_open_files
        self._open_order: OrderedDict[int, None] = OrderedDict()
        for source in self.sources:
            _check_unique(source.var_names, source.name, "var_names")
        self.var_names = self._gene_space(genes, gene_join, missing_genes)
        if not self.var_names:
            raise DataFileError(
                f"{_names(self.sources)}: the gene space is empty (files with no genes, or an "
                "empty genes= list); expected at least one gene"
            )
        self._column_maps = [self._column_map(source) for source in self.sources]
        self.obs_columns = dict(obs_columns or {})
        self.offsets = np.cumsum([0] + [source.n_obs for source in self.sources])
        self.n_obs = int(self.offsets[-1])
        if self.n_obs == 0:
            raise DataFileError(
                f"{_names(self.sources)}: the dataset has no cells (n_obs = 0); expected at least one"
            )
        self.categories: dict[str, list[str]] = {}
        self.obs_values = {
            name: self._obs_column(name, column, (categories or {}).get(name))
            for name, column in self.obs_columns.items()
        }
        self.row_ids = _row_ids(self.sources)
        self.total_counts_key = total_counts_key
        self._obs_totals = self._obs_column_float(total_counts_key) if total_counts_key else None
        self.value_checks: list[ValueCheck] = []
        self.counts_option = counts
        self.counts_verdict = ""
        self.is_counts = self._check_values(counts)
        for source in self.sources:
            _check_genes_once_per_row(source)

    # ----------------------------------------------------------------------------- metadata
    @property
    def n_genes(self) -> int:
        return len(self.var_names)

    def fingerprint(self) -> list[str]:
        """Identity of the data (files: path, size, mtime; AnnData: content hash)."""
        return [source.fingerprint for source in self.sources]

    def var(self) -> pd.DataFrame:
        """Gene annotations (columns of the first file that has each gene) in the store's order."""
        frames = [source.var.assign(_gene=source.var_names) for source in self.sources]
        merged = pd.concat(frames).drop_duplicates("_gene").set_index("_gene")
        return merged.reindex(self.var_names)

    def _gene_space(
        self, genes: Sequence[str] | None, gene_join: str, missing_genes: str = "error"
    ) -> list[str]:
        if genes is not None:
            return self._requested_genes([str(gene) for gene in genes], missing_genes)
        if gene_join == "inner":
            common = self.sources[0].var_names
            for source in self.sources[1:]:
                common = common[common.isin(source.var_names)]
            if len(common) == 0:
                raise DataFileError("the files share no gene (gene_join='inner')")
            return [str(gene) for gene in common]
        seen: dict[str, None] = {}
        for source in self.sources:
            seen.update(dict.fromkeys(map(str, source.var_names)))
        return list(seen)

    def _requested_genes(self, genes: list[str], missing_genes: str) -> list[str]:
        """``genes=`` resolved against the files' genes with the annotation matching's case
        rule (exact spelling first, else case-insensitive): the data's spellings, in the order
        asked. Unknown names are a ConfigError listing them, unless ``missing_genes="zeros"``
        (they become all-zero columns, counted in the log); a name that matches several genes
        differing only in case is refused."""
        known: dict[str, None] = {}
        for source in self.sources:
            known.update(dict.fromkeys(map(str, source.var_names)))
        names = list(known)
        matcher = GeneMatcher(names)
        resolved, unknown, ambiguous = [], [], []
        for gene in genes:
            found = matcher.lookup(gene)
            if found is None:
                unknown.append(gene)
                resolved.append(gene)
            elif len(found) > 1 and gene not in known:
                ambiguous.append(f"{gene} -> {[names[i] for i in found]}")
            else:
                resolved.append(gene if gene in known else names[int(found[0])])
        if ambiguous:
            raise ConfigError(
                f"genes=: {ambiguous[:5]} match several genes of {_names(self.sources)} that "
                "differ only in case; spell them exactly"
            )
        if unknown and missing_genes != "zeros":
            raise ConfigError(
                f"genes=: {len(unknown)} of {len(genes)} names are not genes of "
                f"{_names(self.sources)} (matched exactly, else case-insensitively), e.g. "
                f"{unknown[:10]}; check gene_symbol/Ensembl naming, or pass "
                "missing_genes='zeros' to keep them as all-zero columns"
            )
        if unknown:
            logger.warning(
                "genes=: %d of %d names are not in the data and are all-zero columns "
                "(missing_genes='zeros'), e.g. %s",
                len(unknown),
                len(genes),
                unknown[:5],
            )
        _check_unique(pd.Index(resolved), "genes=", "the gene list")
        return resolved

    def _column_map(self, source: Source) -> np.ndarray | None:
        """File gene position -> store gene position (-1: dropped); None when identical."""
        mapping = (
            pd.Index(self.var_names).get_indexer(source.var_names.astype(str)).astype(np.int64)
        )
        if len(mapping) == self.n_genes and np.array_equal(mapping, np.arange(self.n_genes)):
            return None
        return mapping

    def _concat_obs(self, column: str) -> pd.Series:
        """The obs column over all sources; a source that lacks it is an error listing its keys."""
        parts = []
        for source in self.sources:
            if column not in source.obs.columns:
                uses = [f"{name}_n" for name, col in self.obs_columns.items() if col == column]
                purpose = f" (requested for {', '.join(uses)})" if uses else ""
                raise DataFileError(
                    f"{source.name}: obs column {column!r} is missing{purpose}; "
                    f"available obs keys: {sorted(map(str, source.obs.columns))}"
                )
            parts.append(source.obs[column].reset_index(drop=True))
        return pd.concat(parts, ignore_index=True)

    def _obs_column(self, name: str, column: str, frozen: Sequence[str] | None) -> np.ndarray:
        values = self._concat_obs(column)
        numeric = (
            pd.api.types.is_numeric_dtype(values)
            and not isinstance(values.dtype, pd.CategoricalDtype)
            and not pd.api.types.is_bool_dtype(values)
        )
        if numeric and frozen is None:
            return values.to_numpy(dtype=np.float32)
        if frozen is not None:
            categories = [str(category) for category in frozen]
        elif isinstance(values.dtype, pd.CategoricalDtype) and len(self.sources) == 1:
            categories = [str(category) for category in values.cat.categories]
        else:
            categories = sorted({str(value) for value in values.dropna()})
        self.categories[name] = categories
        as_text = values.astype(object).where(values.notna(), None)
        codes = pd.Categorical(
            as_text.map(lambda v: None if v is None else str(v)), categories=categories
        ).codes
        missing = int(values.isna().sum())
        if missing:
            warnings.warn(
                f"obs column {column!r} ({name}_n): {missing} of {len(values)} cells have no "
                "value (NaN); their code is -1, so statistics grouped by it use the global "
                "ones for them",
                stacklevel=4,
            )
        return codes.astype(np.int64)

    def set_categories(self, categories: Mapping[str, Sequence[str]]) -> None:
        """Re-code obs columns against saved category maps (resume on other data or ranks)."""
        for name, frozen in categories.items():
            if name in self.obs_columns:
                self.obs_values[name] = self._obs_column(name, self.obs_columns[name], frozen)

    def _obs_column_float(self, column: str) -> np.ndarray:
        values = self._concat_obs(column)
        if not pd.api.types.is_numeric_dtype(values):
            raise DataFileError(
                f"obs column {column!r} must be numeric (library sizes), found dtype {values.dtype}"
            )
        return values.to_numpy(dtype=np.float64)

    def _check_values(self, counts: bool | str) -> bool:
        """Reject negative / non-finite values; decide whether the data are integer counts.

        Each source's values (all of them in memory, all or a spread sample when backed: see
        :meth:`Source.values_to_check`) are checked with :func:`_check_array`. The verdict for
        ``counts="auto"`` is True only when every checked value of every source is an integer.
        """
        if counts not in (True, False, "auto"):
            raise ConfigError(f"counts must be True, False or 'auto', got {counts!r}")
        integer = True
        for source in self.sources:
            values, complete = source.values_to_check(VALUE_CHECK_MAX_VALUES)
            values = np.asarray(values)
            _check_dtype_kind(values.dtype, source.where)
            source_integer = _check_array(
                values, source.where, require_integer=counts is True, scope="stored values"
            )
            self.value_checks.append(
                ValueCheck(
                    source=source.where,
                    dtype=str(values.dtype),
                    values_checked=int(values.size),
                    values_stored=source.n_stored,
                    complete=complete,
                    integer=source_integer,
                    minimum=float(values.min()) if values.size else 0.0,
                    maximum=float(values.max()) if values.size else 0.0,
                )
            )
            integer &= source_integer
            # Do not leave a handle open in the main process for forked DataLoader workers to
            # inherit; reads reopen lazily.
            source.close()
        is_counts = bool(integer) if counts == "auto" else bool(counts)
        if is_counts:
            for check in self.value_checks:
                _check_count_range(check.maximum, check.source)
        described = "; ".join(check.describe() for check in self.value_checks)
        if counts == "auto":
            conclusion = (
                "integer counts (batches carry int32 counts_ng)"
                if is_counts
                else "NOT integer counts (batches carry float32 values; transforms that need "
                "raw counts, such as Pearson residuals, will refuse them)"
            )
            self.counts_verdict = f"counts='auto' concluded {conclusion}: {described}"
        else:
            self.counts_verdict = f"counts={counts!r} (declared): {described}"
        logger.info(self.counts_verdict)
        return is_counts

    def _verify_block(self, source_index: int, block: RowBlock, local_rows: np.ndarray) -> None:
        """Check values of a block read from a source the setup check only sampled."""
        checks = self.value_checks
        if source_index < len(checks) and checks[source_index].complete:
            return
        if self.is_counts and block.data.size and not _fits_int32(block.data.dtype):
            largest = int(np.argmax(block.data))
            row_id = np.searchsorted(block.indptr, largest, side="right") - 1
            where = f"{self.sources[source_index].where} (row {int(local_rows[row_id])})"
            _check_count_range(float(block.data[largest]), where)
        if block.data.dtype.kind == "u" or block.data.dtype.kind == "b":
            return
        source = self.sources[source_index]
        try:
            _check_array(
                block.data,
                source.where,
                require_integer=self.is_counts,
                scope="stored values of the rows read",
                integer_reason=(
                    "counts=True"
                    if self.counts_option is True
                    else "counts='auto' judged the file to hold counts from a sample"
                ),
            )
        except DataFileError as error:
            bad = _bad_value_positions(block.data, self.is_counts)
            row_ids = np.searchsorted(block.indptr, bad[:1], side="right") - 1
            row = int(local_rows[row_ids[0]]) if len(row_ids) else -1
            raise DataFileError(
                f"{error} [found while reading row {row} of the file; the setup check had "
                f"sampled {checks[source_index].values_checked:,} of "
                f"{checks[source_index].values_stored:,} values]"
            ) from None

    # ----------------------------------------------------------------------------- reading
    def _touch(self, source_index: int) -> None:
        """Keep at most ``max_open_files`` h5py handles open (least recently used closed)."""
        self._open_order.pop(source_index, None)
        self._open_order[source_index] = None
        while len(self._open_order) > self.max_open_files:
            oldest, _ = self._open_order.popitem(last=False)
            self.sources[oldest].close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open_order"] = OrderedDict()
        return state

    def read(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """A CSR batch of the given global rows (returned in ascending order of row index)."""
        return self.read_batches([rows])[0]

    def read_batches(
        self, batches: Sequence[Sequence[int] | np.ndarray]
    ) -> list[dict[str, torch.Tensor]]:
        """Several CSR batches (each in ascending row order) from one read of their rows.

        The batches of one shuffle pool draw their rows from the same blocks: the h5py reader
        reads the union once per source (:meth:`Source.hold_rows`) and cuts the batches from it,
        so each block is read once instead of once per batch. Direct (positional) reads fetch
        each batch's rows themselves, which measured faster than an extra copy of the pool.
        """
        wanted = [np.unique(np.asarray(rows, dtype=np.int64)) for rows in batches]
        every = np.unique(np.concatenate(wanted)) if wanted else np.zeros(0, np.int64)
        if len(every) and (every[0] < 0 or every[-1] >= self.n_obs):
            raise IndexError(f"row index out of range [0, {self.n_obs})")
        # Per batch, the blocks of its sources in source order (= ascending rows) and their library
        # sizes. Each source is finished before the next is touched: touching may close the
        # least recently used file, whose reader must not be used afterwards.
        parts: list[tuple[list[RowBlock], list[np.ndarray]]] = [([], []) for _ in wanted]
        source_ids = [np.searchsorted(self.offsets, rows, side="right") - 1 for rows in wanted]
        every_ids = np.searchsorted(self.offsets, every, side="right") - 1
        for source_index in np.unique(every_ids).tolist():
            self._touch(source_index)
            offset = self.offsets[source_index]
            held = self.sources[source_index].hold_rows(every[every_ids == source_index] - offset)
            for rows, ids, (blocks, totals) in zip(wanted, source_ids, parts, strict=True):
                local = rows[ids == source_index] - offset
                if len(local):
                    block = held.take(local)
                    _check_columns(block, self.sources[source_index], local)
                    self._verify_block(source_index, block, local)
                    if self._obs_totals is None:  # else the batch takes the obs column's
                        totals.append(_row_sums(block))
                    blocks.append(_remap_columns(block, self._column_maps[source_index]))
        return [self._batch(rows, *part) for rows, part in zip(wanted, parts, strict=True)]

    def _batch(
        self, rows: np.ndarray, blocks: list[RowBlock], totals: list[np.ndarray]
    ) -> dict[str, torch.Tensor]:
        """The batch dict of ``rows`` (ascending) from its sources' blocks, in source order."""
        if not blocks:
            blocks = [RowBlock(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))]
        merged = concat_row_blocks(blocks)
        indptr, indices, data = merged.indptr, merged.indices, merged.data
        dtype = torch.int32 if self.is_counts else torch.float32
        values = torch.from_numpy(data).to(dtype)
        index_dtype = torch.int32 if len(data) < 2**31 - 1 else torch.int64
        counts_ng = torch.sparse_csr_tensor(
            torch.from_numpy(indptr).to(index_dtype),
            torch.from_numpy(indices).to(index_dtype),
            values,
            size=(len(rows), self.n_genes),
            check_invariants=False,
        )
        if self._obs_totals is not None:
            total = self._obs_totals[rows]
        else:
            total = np.concatenate(totals) if totals else np.zeros(0)
        batch = {
            "counts_ng": counts_ng,
            "total_counts_n": torch.from_numpy(np.asarray(total, dtype=np.float32)),
            "cell_index_n": torch.from_numpy(rows),
        }
        for name, values_n in self.obs_values.items():
            batch[f"{name}_n"] = torch.from_numpy(values_n[rows])
        for name, ids_n in self.row_ids.items():
            batch[f"{name}_n"] = torch.from_numpy(ids_n[rows])
        return batch


def _row_ids(sources: Sequence[Source]) -> dict[str, np.ndarray]:
    """Every source's :attr:`Source.row_ids` over the whole store (-1 where a source has none)."""
    names = sorted({name for source in sources for name in source.row_ids})
    return {
        name: np.concatenate(
            [source.row_ids.get(name, np.full(source.n_obs, -1, np.int64)) for source in sources]
        ).astype(np.int64)
        for name in names
    }


def _names(sources: Sequence[Source]) -> str:
    shown = ", ".join(source.name for source in sources[:3])
    return shown + (f" (+{len(sources) - 3} more)" if len(sources) > 3 else "")


def _check_dtype_kind(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "biuf":
        raise DataFileError(
            f"{where}: the matrix has unsupported dtype {dtype}; expected integer counts or "
            "floating-point expression values"
        )


def _bad_value_positions(values: np.ndarray, require_integer: bool) -> np.ndarray:
    """Positions of values that are negative, non-finite, or (when required) non-integer."""
    if values.dtype.kind in "ub":
        return np.zeros(0, np.int64)
    bad = values < 0
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        bad |= ~finite
        if require_integer:
            bad |= finite & (values != np.round(values))
    return np.flatnonzero(bad)


def _check_array(
    values: np.ndarray,
    where: str,
    *,
    require_integer: bool,
    scope: str,
    integer_reason: str = "counts=True",
) -> bool:
    """Raise on negative or non-finite values (and non-integers if required); True if integer.

    One vectorized pass per property; the message names the file, what was found (how many,
    examples) and what was expected.
    """
    if values.size == 0 or values.dtype.kind in "ub":
        return True
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            n_nan = int(np.isnan(values).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise DataFileError(
                f"{where}: found {n_nan} NaN and {n_inf} inf among the {values.size:,} "
                f"{scope} checked; expected finite counts or expression values"
            )
    minimum = values.min()
    if minimum < 0:
        n_negative = int((values < 0).sum())
        raise DataFileError(
            f"{where}: found {n_negative} negative value(s) (min {minimum}) among the "
            f"{values.size:,} {scope} checked; expected non-negative counts or expression "
            "(scaled / centred data cannot be normalized again: pass raw counts)"
        )
    if values.dtype.kind != "f":
        return True
    fractional = values != np.round(values)
    if not fractional.any():
        return True
    if require_integer:
        examples = values[fractional][:3].tolist()
        raise DataFileError(
            f"{where}: {integer_reason} but found {int(fractional.sum()):,} non-integer value(s) "
            f"(e.g. {examples}) among the {values.size:,} {scope} checked; expected raw integer "
            "counts (pass raw counts, e.g. layer='counts', or counts=False for continuous data)"
        )
    return False


def _fits_int32(dtype: np.dtype) -> bool:
    """Whether every value of ``dtype`` fits the int32 that counts travel as (no range check)."""
    if dtype.kind == "b":
        return True
    return dtype.kind in "iu" and np.iinfo(dtype).max <= INT32_MAX


def _check_count_range(maximum: float, where: str) -> None:
    """Counts travel as int32 (``counts_ng``); a larger count would wrap around, so refuse it."""
    if maximum > INT32_MAX:
        raise DataFileError(
            f"{where}: found a count of {maximum:.0f}, beyond the int32 range of counts_ng "
            f"(at most {INT32_MAX:,}); expected UMI or read counts per gene and cell. If these "
            "are not counts, pass counts=False (float32 values)"
        )


def check_values(values: np.ndarray, where: str, *, require_integer: bool) -> bool:
    """Public form of the store's value check, for code that builds batches from other inputs
    (e.g. the seed-compatible loaders' items): raises ``DataFileError`` naming ``where`` on
    negative or non-finite values, and on non-integers when ``require_integer``; returns whether
    every value is an integer."""
    values = np.asarray(values)
    _check_dtype_kind(values.dtype, where)
    integer = _check_array(values, where, require_integer=require_integer, scope="values")
    if require_integer and values.size:
        _check_count_range(float(values.max()), where)
    return integer


def _check_unique(names: pd.Index, where: str, what: str) -> None:
    if not names.is_unique:
        duplicated = names[names.duplicated()].unique()[:5].tolist()
        raise DataFileError(
            f"{where}: {what} contain duplicates, e.g. {duplicated}; "
            "make them unique (adata.var_names_make_unique())"
        )


def _check_columns(block: RowBlock, source: Source, local_rows: np.ndarray) -> None:
    """Every stored column index must name one of the file's genes: an index out of range would
    put a value into another cell's row once the batch is densified. One pass (negative indices
    read as unsigned are huge), about 0.02 ms per batch of 500k values."""
    indices = block.indices
    if not indices.size:
        return
    if indices.view(np.dtype(f"u{indices.itemsize}")).max() < source.n_vars:
        return
    first = int(np.flatnonzero((indices < 0) | (indices >= source.n_vars))[0])
    row = int(local_rows[np.searchsorted(block.indptr, first, side="right") - 1])
    raise DataFileError(
        f"{source.where}: row {row} stores the column index {int(indices[first])}; expected "
        f"indices in [0, {source.n_vars}) (the file's genes): its indices array is corrupt"
    )


def _check_genes_once_per_row(source: Source) -> None:
    """Refuse a CSR matrix that stores a gene twice in one row (checked at setup: every row in
    memory, evenly spaced spans backed). scipy and scanpy sum such entries, a densified batch
    would keep one of them. Rows are scanned in chunks of about ``_STRUCTURE_CHUNK`` values, so
    the check's memory stays small whatever the matrix's size."""
    checked = source.structure_to_check(STRUCTURE_CHECK_MAX_ROWS)
    source.close()  # reads reopen lazily; forked DataLoader workers must not inherit a handle
    if checked is None:
        return
    indptr, indices, rows = checked
    first, n_rows = 0, len(indptr) - 1
    while first < n_rows:
        last = int(np.searchsorted(indptr, indptr[first] + _STRUCTURE_CHUNK, side="right")) - 1
        last = min(n_rows, max(last, first + 1))
        chunk = indices[indptr[first] : indptr[last]]
        repeat = _first_repeated_gene(indptr[first : last + 1] - indptr[first], chunk)
        if repeat is not None:
            row, gene = int(rows[first + repeat[0]]), repeat[1]
            raise DataFileError(
                f"{source.where}: row {row} stores gene {source.var_names[gene]!r} (column "
                f"{gene}) more than once; expected each gene at most once per row. Sum the "
                "repeats and write the file again (adata.X.sum_duplicates(); adata.write_h5ad)"
            )
        first = last


def _first_repeated_gene(indptr: np.ndarray, indices: np.ndarray) -> tuple[int, int] | None:
    """(row, gene) of the first gene stored twice in a row of this CSR structure, or None.
    Canonical structures (sorted, unique) pass with scipy's C-level scan."""
    marker = np.zeros(len(indices), np.int8)
    n_genes = int(indices.max()) + 1 if len(indices) else 0
    if sp.csr_matrix(
        (marker, indices, indptr), shape=(len(indptr) - 1, n_genes)
    ).has_canonical_format:
        return None
    row_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = np.lexsort((indices, row_of))
    row_sorted, gene_sorted = row_of[order], indices[order]
    repeated = np.flatnonzero(
        (row_sorted[1:] == row_sorted[:-1]) & (gene_sorted[1:] == gene_sorted[:-1])
    )
    if not len(repeated):
        return None  # unsorted but unique: fine
    return int(row_sorted[repeated[0]]), int(gene_sorted[repeated[0]])


def _row_sums(block: RowBlock) -> np.ndarray:
    """Per-row sum of stored values over all of the file's genes (float64).

    Integer values are summed in int64 (exact, and a quarter faster than converting each value
    to float64 on the way); others in float64.
    """
    starts = block.indptr[:-1]
    nonempty = np.diff(block.indptr) > 0
    sums = np.zeros(len(starts))
    if nonempty.any():
        exact = np.int64 if np.issubdtype(block.data.dtype, np.integer) else np.float64
        # reduceat sums each run up to the next start: over the non-empty rows those runs are
        # exactly the rows (reduceat would give an empty row its neighbour's value).
        sums[nonempty] = np.add.reduceat(block.data, starts[nonempty], dtype=exact)
    return sums


def _remap_columns(block: RowBlock, mapping: np.ndarray | None) -> RowBlock:
    """Translate file gene positions to store positions, dropping genes outside the store."""
    if mapping is None:
        return block
    columns = mapping[block.indices]
    keep = columns >= 0
    if keep.all():
        return RowBlock(block.indptr, columns, block.data)
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return RowBlock(kept_before[block.indptr], columns[keep], block.data[keep])
