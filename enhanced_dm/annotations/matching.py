"""Match annotation gene symbols to the genes of a dataset (its var_names, or a symbol column)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from enhanced_dm.errors import ConfigError

__all__ = ["GeneMatcher", "MembershipResult"]


def _exact(symbol: object) -> str:
    """A symbol stripped of surrounding whitespace ("" for missing values)."""
    return symbol.strip() if isinstance(symbol, str) else ""


def _key(symbol: object) -> str:
    """The case-insensitive form: stripped and case-folded ("" for missing values)."""
    return _exact(symbol).casefold()


@dataclass(frozen=True)
class MembershipResult:
    """Gene-set membership on a dataset's gene space, and how well the sets matched it.

    ``membership_pg[p, g]`` is 1.0 when data gene ``g`` belongs to set ``p`` (float32 CSR, sets in
    the order given). ``set_size_before_p`` counts each set's distinct symbols (case-insensitive),
    ``set_size_after_p`` the data genes it covers; the latter can be larger when a symbol matches
    several data genes. ``unmatched_count`` counts distinct symbols (over all sets) that match no
    data gene, and ``unmatched_examples`` lists the first few, in order of first appearance.
    ``ambiguous_count`` counts distinct symbols whose case-insensitive form names several data
    genes that differ only in case (``C10orf68`` / ``C10ORF68``); they are matched exactly where
    an exact spelling exists, else to all of them.
    """

    membership_pg: scipy.sparse.csr_matrix
    set_names: tuple[str, ...]
    set_size_before_p: np.ndarray
    set_size_after_p: np.ndarray
    unmatched_count: int
    unmatched_examples: tuple[str, ...]
    ambiguous_count: int = 0

    @property
    def covered_gene_fraction(self) -> float:
        """Fraction of the data genes that belong to at least one set (0.0 with no genes)."""
        n_genes = self.membership_pg.shape[1]
        if n_genes == 0:
            return 0.0
        return float(np.count_nonzero(self.membership_pg.getnnz(axis=0)) / n_genes)


class GeneMatcher:
    """Map annotation gene symbols to column indices of a dataset's genes.

    Each data gene is known by its ``var_names`` entry and, when ``symbols`` is given (a column
    aligned with ``var_names``, e.g. ``adata.var["gene_short_name"]`` when var_names are Ensembl
    ids), by its symbol too; missing symbols (None, NaN, "") are skipped. Surrounding whitespace
    is ignored. **Case rule**: an exact spelling wins; only a symbol with no exact match is
    compared case-insensitively, because annotation files and count matrices disagree on case
    (``Mt-co1`` vs ``MT-CO1``). So when the data hold both ``C10orf68`` and ``C10ORF68``, each
    spelling matches its own gene; ``c10orf68`` (no exact match) matches both, and such symbols
    are counted as ambiguous. A symbol that names several data genes exactly (a duplicated
    symbol column) maps to all of them, so no annotated gene is dropped silently. The same rule
    resolves ``genes=`` lists against the data's var_names.
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
        exact: dict[str, dict[int, None]] = {}
        folded: dict[str, dict[int, None]] = {}
        spellings_of: dict[str, dict[str, None]] = {}
        for index, name in enumerate(names):
            spellings = [name] if symbol_list is None else [name, symbol_list[index]]
            for spelling in map(_exact, spellings):
                if spelling:
                    exact.setdefault(spelling, {})[index] = None
                    folded.setdefault(spelling.casefold(), {})[index] = None
                    spellings_of.setdefault(spelling.casefold(), {})[spelling] = None
        self.n_genes = len(names)
        self._exact = {key: _as_array(indices) for key, indices in exact.items()}
        self._folded = {key: _as_array(indices) for key, indices in folded.items()}
        # Several spellings of one key that name several genes (one gene's var name and symbol
        # differing in case is no ambiguity).
        self._case_variants = {
            key for key, found in spellings_of.items() if len(found) > 1 and len(folded[key]) > 1
        }

    def lookup(self, symbol: object) -> np.ndarray | None:
        """Indices of the data genes ``symbol`` names (exact spelling first), or None."""
        spelling = _exact(symbol)
        if not spelling:
            return None
        found = self._exact.get(spelling)
        return found if found is not None else self._folded.get(spelling.casefold())

    def is_ambiguous(self, symbol: object) -> bool:
        """Whether the data hold several spellings of ``symbol`` differing only in case."""
        return _key(symbol) in self._case_variants

    def indices(self, genes: Iterable[str]) -> np.ndarray:
        """Sorted, unique int64 indices of the data genes that ``genes`` name (unknown ones skipped)."""
        matched = [found for found in map(self.lookup, genes) if found is not None]
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
        ambiguous: set[str] = set()
        for row, genes in enumerate(gene_sets.values()):
            spellings = {_exact(gene): None for gene in genes if _exact(gene)}
            size_before.append(len({spelling.casefold() for spelling in spellings}))
            for spelling in spellings:
                if self.lookup(spelling) is None:
                    unmatched.setdefault(spelling.casefold(), spelling)
                elif self.is_ambiguous(spelling):
                    ambiguous.add(spelling)
            indices = self.indices(spellings)
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
            ambiguous_count=len(ambiguous),
        )


def _as_array(indices: dict[int, None]) -> np.ndarray:
    return np.fromiter(indices, dtype=np.int64, count=len(indices))
