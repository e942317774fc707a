"""Match annotation gene symbols to the genes of a dataset (its var_names, or a symbol column)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from enhanced_dm.errors import ConfigError

__all__ = ["GeneMatcher", "MembershipResult"]


def _key(symbol: object) -> str:
    """The form symbols are compared in: stripped and case-folded ("" for missing values)."""
    return symbol.strip().casefold() if isinstance(symbol, str) else ""


@dataclass(frozen=True)
class MembershipResult:
    """Gene-set membership on a dataset's gene space, and how well the sets matched it.

    ``membership_pg[p, g]`` is 1.0 when data gene ``g`` belongs to set ``p`` (float32 CSR, sets in
    the order given). ``set_size_before_p`` counts each set's distinct symbols (case-insensitive),
    ``set_size_after_p`` the data genes it covers; the latter can be larger when a symbol matches
    several data genes. ``unmatched_count`` counts distinct symbols (over all sets) that match no
    data gene, and ``unmatched_examples`` lists the first few, in order of first appearance.
    """

    membership_pg: scipy.sparse.csr_matrix
    set_names: tuple[str, ...]
    set_size_before_p: np.ndarray
    set_size_after_p: np.ndarray
    unmatched_count: int
    unmatched_examples: tuple[str, ...]

    @property
    def covered_gene_fraction(self) -> float:
        """Fraction of the data genes that belong to at least one set (0.0 with no genes)."""
        n_genes = self.membership_pg.shape[1]
        if n_genes == 0:
            return 0.0
        return float(np.count_nonzero(self.membership_pg.getnnz(axis=0)) / n_genes)


class GeneMatcher:
    """Map annotation gene symbols to column indices of a dataset's genes, case-insensitively.

    Each data gene is known by its ``var_names`` entry and, when ``symbols`` is given (a column
    aligned with ``var_names``, e.g. ``adata.var["gene_short_name"]`` when var_names are Ensembl
    ids), by its symbol too; missing symbols (None, NaN, "") are skipped. Comparison ignores case
    and surrounding whitespace, because annotation files and count matrices disagree on case
    (``Mt-co1`` vs ``MT-CO1``), and symbols are never told apart by case alone within one species.
    A symbol that names several data genes (duplicated symbols, or names differing only in case)
    maps to all of them, so no annotated gene is dropped silently.
    """

    def __init__(
        self, var_names: Sequence[str], symbols: Sequence[str | None] | None = None
    ) -> None:
        names = list(var_names)
        # list() reads a pandas Series by position, never by its (Ensembl id) index labels.
        symbol_list = None if symbols is None else list(symbols)
        if symbol_list is not None and len(symbol_list) != len(names):
            raise ConfigError(
                f"symbols has {len(symbol_list)} entries but var_names has {len(names)}; "
                "they must be aligned (one symbol per data gene)"
            )
        lookup: dict[str, dict[int, None]] = {}
        for index, name in enumerate(names):
            spellings = [name] if symbol_list is None else [name, symbol_list[index]]
            for spelling in spellings:
                key = _key(spelling)
                if key:
                    lookup.setdefault(key, {})[index] = None
        self.n_genes = len(names)
        self._lookup = {
            key: np.fromiter(indices, dtype=np.int64, count=len(indices))
            for key, indices in lookup.items()
        }

    def indices(self, genes: Iterable[str]) -> np.ndarray:
        """Sorted, unique int64 indices of the data genes that ``genes`` name (unknown ones skipped)."""
        matched = [self._lookup[key] for key in map(_key, genes) if key in self._lookup]
        if not matched:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate(matched))

    def membership(
        self, gene_sets: Mapping[str, Sequence[str]], max_examples: int = 10
    ) -> MembershipResult:
        """Build the sets x data genes 0/1 matrix of ``gene_sets`` and its matching statistics.

        Sets left empty after matching keep their (empty) row, so rows follow ``gene_sets``; the
        caller decides whether to drop them (``set_size_after_p == 0``).
        """
        rows: list[np.ndarray] = []
        columns: list[np.ndarray] = []
        size_before: list[int] = []
        unmatched: dict[str, str] = {}
        for row, genes in enumerate(gene_sets.values()):
            first_spelling: dict[str, str] = {}
            for gene in genes:
                key = _key(gene)
                if key:
                    first_spelling.setdefault(key, gene.strip())
            size_before.append(len(first_spelling))
            for key, spelling in first_spelling.items():
                if key not in self._lookup:
                    unmatched.setdefault(key, spelling)
            indices = self.indices(first_spelling)
            rows.append(np.full(len(indices), row, dtype=np.int64))
            columns.append(indices)
        n_sets = len(gene_sets)
        row_index = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        column_index = np.concatenate(columns) if columns else np.empty(0, dtype=np.int64)
        membership_pg = scipy.sparse.csr_matrix(
            (np.ones(len(row_index), dtype=np.float32), (row_index, column_index)),
            shape=(n_sets, self.n_genes),
        )
        return MembershipResult(
            membership_pg=membership_pg,
            set_names=tuple(gene_sets),
            set_size_before_p=np.asarray(size_before, dtype=np.int64),
            set_size_after_p=np.diff(membership_pg.indptr).astype(np.int64),
            unmatched_count=len(unmatched),
            unmatched_examples=tuple(list(unmatched.values())[:max_examples]),
        )
