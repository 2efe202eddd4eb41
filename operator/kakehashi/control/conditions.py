"""Kubernetes-style status conditions (the `metav1.Condition` shape and its rules)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str
    status: ConditionStatus
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")


def condition(
    previous: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str,
) -> Condition:
    """The condition as it is now; lastTransitionTime moves only when the status flips."""
    before = find(previous, type_)
    changed = before is None or before.status != status
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32768],
        lastTransitionTime=now if changed or before is None else before.last_transition_time,
        observedGeneration=generation,
    )


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def true_condition(obj: Mapping[str, Any] | None, *types: str) -> Mapping[str, Any] | None:
    """The first condition of one of `types` with status True in a raw object's status."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return dict(cond)
    return None
