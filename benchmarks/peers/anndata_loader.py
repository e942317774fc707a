"""anndata's ``AnnLoader`` on a backed ``.h5ad``, shuffled: the baseline most users start from.

AnnLoader's default converter densifies X into a float32 torch tensor per batch; that is what its
users get, so it is measured as shipped.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator

from common import EpochFactory, Minibatch

from peers import LoaderConfig, Settings


def ann_loader(settings: Settings) -> EpochFactory:
    """``AnnLoader(read_h5ad(path, backed="r"), batch_size, shuffle=True)``."""
    import anndata
    from anndata.experimental import AnnLoader

    adata = anndata.read_h5ad(settings.path, backed="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = AnnLoader(adata, batch_size=settings.batch_size, shuffle=True)

    def epoch() -> Iterator[Minibatch]:
        for view in loader:
            codes = view.obs[settings.cell_type_key].cat.codes.to_numpy()
            yield Minibatch(view.X, codes)

    return epoch


def configs(settings: Settings) -> list[LoaderConfig]:
    """One row: AnnLoader, backed, shuffled."""
    name = "anndata AnnLoader (backed, shuffled)"
    if importlib.util.find_spec("anndata") is None:
        return [LoaderConfig(name, "peer", skip="anndata is not installed")]
    return [
        LoaderConfig(
            name,
            "peer",
            setup=lambda: ann_loader(settings),
            options={"backed": True, "shuffle": True, "output": "dense torch float32"},
        )
    ]
