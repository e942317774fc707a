"""scvi-tools' ``AnnDataLoader`` on a backed ``.h5ad``, shuffled, sparse CSR tensors out.

Installed only where it leaves the project's pins alone (checked with ``pip install --dry-run``:
scvi-tools 1.4.2 adds packages but keeps torch 2.13.0 and lightning 2.6.6). It is not a project
dependency; the row is skipped with a note where it is missing.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator

from common import EpochFactory, Minibatch

from peers import LoaderConfig, Settings


def scvi_loader(settings: Settings) -> EpochFactory:
    """``SCVI.setup_anndata`` on the backed file, then ``AnnDataLoader(shuffle=True)``."""
    import anndata
    import scvi
    from scvi.dataloaders import AnnDataLoader

    adata = anndata.read_h5ad(settings.path, backed="r")
    scvi.settings.seed = settings.seed
    scvi.model.SCVI.setup_anndata(adata, labels_key=settings.cell_type_key)
    manager = scvi.model.SCVI._get_most_recent_anndata_manager(adata)
    loader = AnnDataLoader(
        manager, batch_size=settings.batch_size, shuffle=True, load_sparse_tensor=True
    )

    def epoch() -> Iterator[Minibatch]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for batch in loader:
                yield Minibatch(batch["X"], batch["labels"].reshape(-1).long().numpy())

    return epoch


def configs(settings: Settings) -> list[LoaderConfig]:
    """One row: scvi-tools AnnDataLoader, backed, shuffled."""
    name = "scvi-tools AnnDataLoader (backed, shuffled)"
    if importlib.util.find_spec("scvi") is None:
        return [
            LoaderConfig(name, "peer", skip="scvi-tools is not installed (pip install scvi-tools)")
        ]
    return [
        LoaderConfig(
            name,
            "peer",
            setup=lambda: scvi_loader(settings),
            options={"backed": True, "shuffle": True, "load_sparse_tensor": True},
        )
    ]
