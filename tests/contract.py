"""The shared contract checks every transform and component must pass (torchvision's
``check_transform`` habit): run them over each new component.

* :func:`check_transform`: the input batch is never mutated; outputs stay on the input's device
  and keep the dtype of keys they overwrite; picklable; the state round-trips through
  ``state_dict``; outside the train stage the output does not depend on the batch's coordinates
  (epoch, batch index, rank), and in the train stage the same context gives the same output;
  CPU == CUDA where a GPU is present.
* :func:`check_component`: slots are valid; every step passes :func:`check_transform` on the
  batch as the pipeline hands it over; the per-dataset state round-trips into a fresh component;
  fitted statistics do not change with training steps and are the same from a fresh fit; each
  fit metric merges like DDP ranks would (two halves == the whole); running state changes only
  in the train stage and round-trips through the DataModule's ``state_dict()["running"]``.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from enhanced_dm.components.base import SLOTS, Component
from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from enhanced_dm.fitting.driver import fitted_states
from enhanced_dm.transforms.base import FittableTransform, Transform
from enhanced_dm.transforms.context import StepContext

EVAL_STAGES = ("val", "test", "predict")


def clone_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in batch.items()}


def assert_same(a: Any, b: Any, what: str) -> None:
    """Bitwise equality of nested dicts / lists / tensors (sparse: structure and values; NaN
    equal to NaN)."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping) and a.keys() == b.keys(), f"{what}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{what}: {key}")
        return
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{what}: lengths differ"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{what}[{index}]")
        return
    if not torch.is_tensor(a):
        assert a == b, what
        return
    assert torch.is_tensor(b), what
    assert a.layout == b.layout and a.dtype == b.dtype and a.shape == b.shape, what
    if a.layout == torch.sparse_csr:
        for part in ("crow_indices", "col_indices", "values"):
            assert torch.equal(getattr(a, part)(), getattr(b, part)()), f"{what} ({part})"
        return
    assert torch.equal(a.nan_to_num(), b.nan_to_num()), what


def check_transform(transform: Transform, batch: Mapping[str, Any], seed: int = 0) -> None:
    """The transform contract on one batch (see the module docstring)."""
    original = clone_batch(batch)
    train = StepContext("train", seed=seed, epoch=1, batch_index=3)
    outputs = {stage: transform(batch, StepContext(stage, seed=seed)) for stage in EVAL_STAGES}
    outputs["train"] = transform(batch, train)
    assert_same(batch, original, f"{transform!r} mutated its input")
    device = batch["cell_index_n"].device
    for stage, out in outputs.items():
        for key, value in out.items():
            assert value.device == device, f"{transform!r} moved {key} ({stage})"
            if key in batch and batch[key].layout == value.layout == torch.strided:
                assert value.dtype == batch[key].dtype, f"{transform!r} changed {key}'s dtype"
    elsewhere = StepContext("predict", seed=seed, epoch=7, global_rank=1, batch_index=11)
    assert_same(transform(batch, elsewhere), outputs["predict"], f"{transform!r} outside training")
    assert_same(transform(batch, train), outputs["train"], f"{transform!r} train")
    restored = pickle.loads(pickle.dumps(transform))
    restored.load_state_dict(transform.state_dict())
    assert_same(restored(batch, train), outputs["train"], f"{transform!r} restored")
    if torch.cuda.is_available():
        moved = copy.deepcopy(transform).to("cuda")
        on_gpu = moved({k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()})
        for key, value in transform(batch).items():
            got = on_gpu[key].cpu()
            if got.layout == torch.sparse_csr:
                got, value = got.to_dense(), value.to_dense()
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5)


def _step_inputs(dm: BaseEnhancedDataModule, batch: Mapping[str, Any], index: int) -> Any:
    assert dm.pipeline is not None
    return dm.pipeline(dict(batch), StepContext("predict", seed=dm.seed), stop_before=index)


def _check_metric_merges(transform: FittableTransform, inputs: Mapping[str, Any]) -> None:
    """Two metrics over the halves of a batch, merged, compute what one metric over it does."""
    rows = inputs["cell_index_n"].shape[0]
    whole, first, second = (transform.fit_metric() for _ in range(3))
    whole.update(inputs)
    halves = [_rows(inputs, slice(0, rows // 2)), _rows(inputs, slice(rows // 2, rows))]
    first.update(halves[0])
    second.update(halves[1])
    first.merge_state(second)
    expected, got = whole.compute(), first.compute()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6)


def _rows(batch: Mapping[str, Any], part: slice) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = batch["cell_index_n"].shape[0]
    for key, value in batch.items():
        if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != rows:
            out[key] = value
        elif value.layout == torch.sparse_csr:
            out[key] = value.to_dense()[part].to_sparse_csr()
        else:
            out[key] = value[part]
    return out


def check_component(
    make_component: Callable[[], Component],
    make_datamodule: Callable[[Sequence[Component]], BaseEnhancedDataModule],
    train_batches: int = 2,
) -> BaseEnhancedDataModule:
    """The component contract, through a DataModule built with a fresh component; returns it."""
    component = make_component()
    dm = make_datamodule([component])
    dm.setup("fit")
    assert dm.pipeline is not None
    steps = component.transforms()
    assert {slot for _, _, slot in steps} <= set(SLOTS)
    names = [name for name, _ in dm.pipeline.named_transforms()]
    batch = next(iter(dm.predict_dataloader()))
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    for name, transform, _ in steps:
        inputs = _step_inputs(dm, batch, names.index(name))
        check_transform(transform, inputs, seed=dm.seed)
        if isinstance(transform, FittableTransform):
            _check_metric_merges(transform, inputs)

    fitted = fitted_states(dm.pipeline)
    before = clone_batch(component.running_state())
    for _, eval_batch in zip(range(train_batches), dm.val_dataloader(), strict=False):
        dm.normalize(eval_batch, stage="val")
    assert_same(component.running_state(), before, "running state changed outside train")
    for _, train_batch in zip(range(train_batches), dm.train_dataloader(), strict=False):
        dm.normalize(train_batch, stage="train")
    after = fitted_states(dm.pipeline)
    for step in fitted:
        assert_same(after[step], fitted[step], f"training changed fitted {step}")

    fresh = make_datamodule([make_component()])
    fresh.setup("fit")
    assert fresh.pipeline is not None
    for step, state in fitted_states(fresh.pipeline).items():
        assert_same(state, fitted[step], f"a second fit of {step} differs")

    state = dm.state_dict()
    assert_same(state["components"][component.name], component.state_dict(), "constants")
    if component.has_running_state:
        assert_same(state["running"][component.name], component.running_state(), "running state")
    restored_component = make_component()
    restored = make_datamodule([restored_component])
    restored.load_state_dict(state)
    restored.setup("fit")
    assert_same(
        restored.normalize(batch, stage="predict"),
        dm.normalize(batch, stage="predict"),
        f"{component.name} restored from state_dict",
    )
    return dm
