"""ResourceDataModule: the base plus per-cell resource covariates, allocation, a resource
embedding and (optionally) covariates regressed out of the expression."""

from __future__ import annotations

from typing import ClassVar

from enhanced_dm.components.base import Component
from enhanced_dm.components.resource import ResourceComponent
from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from enhanced_dm.transforms.resource import ALLOCATION_CATEGORIES

__all__ = ["ResourceDataModule"]


class ResourceDataModule(BaseEnhancedDataModule):
    """Base DataModule plus a :class:`~enhanced_dm.components.resource.ResourceComponent`.

    Batches carry, besides the base keys, ``covariates_nc`` (library size, genes detected,
    mitochondrial and ribosomal percentages, numeric obs regressors), ``allocation_na`` (share
    of counts per resource category), ``efficiency_n`` (library size over the train median,
    clipped) and ``resource_nd`` (z-scored covariate groups and PCA blocks of energy / nutrient
    genes). With ``regress_out`` the chosen covariates are regressed out of ``x_ng`` per gene
    (``scanpy.pp.regress_out``'s model, fitted once on the train split) before the gene-wise
    normalization. ``get_resource_stats()`` reports covariate distributions, genes per block,
    variance explained per PCA block, the regression's R^2 and the cells clipped by the
    efficiency range.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (ResourceComponent,)

    @property
    def resource(self) -> ResourceComponent:
        return self.component(ResourceComponent)

    @property
    def covariate_names(self) -> list[str]:
        """Columns of ``covariates_nc`` (after ``setup``)."""
        return self.resource.covariate_names

    @property
    def resource_names(self) -> list[str]:
        """Columns of ``resource_nd`` (after ``setup``)."""
        return self.resource.resource_names

    @property
    def allocation_names(self) -> list[str]:
        """Columns of ``allocation_na``."""
        return list(ALLOCATION_CATEGORIES)
