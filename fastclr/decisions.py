"""A plan of decisions: what pretraining's :class:`~fastclr.train.plan.RunPlan` and fine-tuning's
:class:`~fastclr.finetune.plan.FinetunePlan` are made of.

Each setting a run derives is a :class:`Decision` (its value and why); a plan holds them in the
order they were made, with the data plan, and is sent to the other ranks and stored in the
checkpoint as :meth:`DecidedPlan.to_dict` writes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from fastclr.data.plan import DataPlan

__all__ = ["DecidedPlan", "Decision"]


@dataclass(frozen=True)
class Decision:
    """One decided setting: its value and why (``given`` when the user set it)."""

    value: Any
    reason: str


_Plan = TypeVar("_Plan", bound="DecidedPlan")


class DecidedPlan:
    """What a run plan of decisions is, in pretraining (:class:`RunPlan`) and fine-tuning
    (:class:`~fastclr.finetune.plan.FinetunePlan`) alike: each value with its reason, the data
    plan, and how a plan is sent to other ranks and stored in a checkpoint."""

    decisions: dict[str, Decision]
    data: DataPlan
    world_size: int
    #: what a resume compares to tell whether the data changed (:meth:`DataPlan.identity`)
    data_identity: dict[str, Any]

    # the decisions every run makes, under the same names in both plans
    batch = property(lambda self: int(self["batch"]))
    epochs = property(lambda self: int(self["epochs"]))
    steps_per_epoch = property(lambda self: int(self["steps"]))
    lr = property(lambda self: float(self["lr"]))
    loader = property(lambda self: str(self["loader"]))
    num_workers = property(lambda self: int(self["workers"]))
    precision = property(lambda self: str(self["precision"]))

    def __getitem__(self, name: str) -> Any:
        return self.decisions[name].value

    def reason(self, name: str) -> str:
        return self.decisions[name].reason

    @property
    def per_rank(self) -> int:
        """The batch of one rank."""
        return self.batch // self.world_size

    @property
    def threads(self) -> int | None:
        value = self["threads"]
        return None if value is None else int(value)

    def without_memory(self: _Plan) -> _Plan:
        """This plan without decoded folder images (what other ranks receive)."""
        # every plan is a frozen dataclass; mypy cannot see that through the type variable
        return replace(self, data=self.data.without_memory())  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """The decisions as plain values and reasons (what the checkpoint stores)."""
        out: dict[str, Any] = {k: asdict(d) for k, d in self.decisions.items()}
        out["data_root"] = None if self.data.root is None else str(self.data.root)
        out["data_identity"] = dict(self.data_identity)
        return out
