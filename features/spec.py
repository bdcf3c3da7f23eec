"""A transform's parameters, declared once.

A spec is a frozen pydantic model: each field carries its default, bounds, description and (in a
``model_validator``) the checks that span fields. The transforms take the spec; a job's Params
inherit it (``class SessionParams(SessionSpec, JobParams)``), so the CLI flags, the Airflow
Params, the reference docs and the validation all come from the one declaration, and the job hands
its transform ``SessionSpec.of(params)`` — the spec's own fields of the job's parameters, nothing
else (a spec that names a generation or a checkpoint must not change with the warehouse path).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Field", "SEED", "Seeded", "Spec", "mapping_text"]

# The seed every randomized step takes (one default: jobs and transforms share it).
SEED = 42


def mapping_text(value: Any) -> Any:
    """A {key: value} mapping as the key=value,... text a mapping parameter is declared as (so a
    transform may be given either); anything else unchanged, for the field's own validation."""
    return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def of(cls, params: BaseModel) -> Self:
        """This spec's fields of ``params`` (a job's Params that inherit the spec, or another spec)."""
        return cls(**{name: getattr(params, name) for name in cls.model_fields})

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated like a new spec."""
        return type(self)(**{**{n: getattr(self, n) for n in type(self).model_fields}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (tuples as lists), e.g. for a model's config or a generation's key."""
        return self.model_dump(mode="json")


class Seeded(Spec):
    """A spec with a seed; every job's Params are one too, so the seed is declared here only."""

    seed: int = Field(SEED, ge=0, description="Seed for every sampled or randomized step.")
