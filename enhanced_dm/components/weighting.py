"""Stream weighting: the composition's last step, scaling the other components' context streams."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from enhanced_dm.components.base import Component, Slot
from enhanced_dm.options import Option
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.stream_weights import StreamWeights

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore

__all__ = ["StreamWeighting"]


class StreamWeighting(Component):
    """Scales every context stream of the components it watches (:meth:`watch`; their
    :meth:`~enhanced_dm.components.base.Component.context_streams`) to equal total variance on
    the train split (:class:`~enhanced_dm.transforms.stream_weights.StreamWeights`), or by
    ``stream_weights``. It must come after the components it watches."""

    name = "weighting"
    options = (
        Option(
            "adaptive_weighting",
            True,
            bool,
            "Scale each context stream to the same total variance on the train split.",
        ),
        Option(
            "stream_weights",
            None,
            Mapping[str, float] | None,
            "Fixed weights by stream (e.g. {resource_nd: 2.0}); they replace fitted ones.",
        ),
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.watched: list[Component] = []
        self._transforms: list[tuple[str, Transform, Slot]] | None = None

    def watch(self, components: Sequence[Component]) -> None:
        """The components whose streams are weighted (set up before this one)."""
        self.watched = [component for component in components if component is not self]

    def setup(self, store: CellStore) -> None:
        widths: dict[str, int] = {}
        for component in self.watched:
            widths.update(component.context_streams())
        step = StreamWeights(widths, self.adaptive_weighting, self.stream_weights)
        self._transforms = [("stream_weights", step, "after_gene_wise")]

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError("StreamWeighting: call setup() before transforms()")
        return self._transforms

    def report(self) -> dict[str, Any]:
        step: StreamWeights = self.step("stream_weights")
        variances = step.total_variance_s.tolist()
        return {
            "adaptive": step.adaptive,
            "weights": step.weights() if step.fitted else {},
            "total_variance": dict(zip(step.widths, variances, strict=True)) if step.fitted else {},
            "fixed": dict(step.fixed),
        }
