"""Every grouped transform warns once about groups without train cells (global fallback)."""

from __future__ import annotations

import pytest
import torch

from enhanced_dm.transforms import GroupedTransform, PearsonResiduals, QuantileNormalize, ZScore


@pytest.mark.parametrize("make", [ZScore, QuantileNormalize, PearsonResiduals])
def test_groups_without_train_cells_are_named_once(make) -> None:
    transform = make(4, n_groups=3, group_key="batch_n")
    assert isinstance(transform, GroupedTransform)
    transform.fitted_b.copy_(torch.tensor([True, False, True]))
    with pytest.warns(UserWarning, match=r"groups \['lonely'\] have no train cells"):
        assert transform.warn_unfitted_groups(["a", "lonely", "c"]) == [1]
    assert transform.warn_unfitted_groups(["a", "lonely", "c"]) == [1]  # no second warning
    assert transform.config()["group_key"] == "batch_n"
