"""The parameters of item-to-item similarity (``graph.similarity`` on Spark, ``graph.similarity_sparse``
on SciPy): the algorithms, the behaviour weights, the filters and caps, the engine."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import field_validator, model_validator

from recfactory.features.schema import POSITIVE_EVENT_TYPES
from recfactory.features.spec import Field, Seeded, mapping_text

Algo = Literal["swing", "swing_simple", "itemcf", "itemcf_iuf"]
ALGOS: tuple[Algo, ...] = typing.get_args(Algo)


class SimilaritySpec(Seeded):
    algos: tuple[Algo, ...] = Field(
        ALGOS,
        min_length=1,
        description="Algorithms: swing (Yang et al. 2020), swing_simple "
        "(Σ 1/(α+|I_u|)), itemcf (cosine), itemcf_iuf (cosine, heavy users down-weighted).",
    )
    event_types: tuple[str, ...] = Field(POSITIVE_EVENT_TYPES, description="Event types that count as an interaction.")
    behavior_weights: str = Field(
        "",
        description="ItemCF weight per event type, e.g. click=1,cart=2,purchase=4 "
        "(a user-item pair takes its largest; default 1).",
    )
    swing_alpha: float = Field(1.0, ge=0, description="Swing α in w_u·w_v/(α + |I_u ∩ I_v|) (PAI 1, Flink ML 0).")
    user_alpha: float = Field(
        5.0, ge=0, description="Swing user weight w_u = (α_user + |I_u|)^β_user: α_user (PAI 5, Flink ML 15)."
    )
    user_beta: float = Field(-0.35, description="Swing β_user (PAI −0.35, Flink ML −0.3).")
    simple_alpha: float = Field(1.0, ge=0, description="swing_simple α in 1/(α + |I_u|).")
    time_decay_days: float = Field(
        0.0, ge=0, description="ItemCF time decay exp(−|Δt|/τ) between a user's two interactions, τ in days; 0 = off."
    )
    min_user_items: int = Field(2, ge=1, description="Drop users with fewer distinct items.")
    max_user_items: int = Field(5000, ge=1, description="Drop users with more distinct items (robots).")
    max_items_per_user: int = Field(200, ge=2, description="Cap: a user keeps this many items (seeded hash sample).")
    max_users_per_item: int = Field(1000, ge=2, description="Cap: an item keeps this many users (seeded hash sample).")
    top_k: int = Field(100, ge=1, description="Neighbors kept per item.")
    engine: Literal["auto", "sql", "blocks"] = Field(
        "auto",
        description="blocks: item blocks scored with SciPy sparse products inside Spark "
        "(applyInArrow); sql: Spark SQL end to end (exact fixed-point sums); auto: blocks unless "
        "--time-decay-days is set (only sql has time decay).",
    )
    blocks: int = Field(
        0,
        ge=0,
        description="Item blocks of the blocks engine (more blocks: less memory "
        "per task, more replication of user rows); 0: one block per 8,000 capped "
        "user-item pairs, 8 to 4,096.",
    )

    @field_validator("behavior_weights", mode="before")
    @classmethod
    def _as_text(cls, v):
        return mapping_text(v)

    @model_validator(mode="after")
    def _consistent(self):
        if not 1 <= self.min_user_items <= self.max_user_items:
            raise ValueError("need 1 <= min_user_items <= max_user_items")
        if any(w <= 0 for w in self.weights.values()):
            raise ValueError("behavior weights must be > 0")
        if self.engine == "blocks" and self.time_decay_days:
            raise ValueError("the blocks engine has no time decay: use --engine sql")
        return self

    @property
    def weights(self) -> dict[str, float]:
        """event type → ItemCF weight (a type not named: 1)."""
        from recfactory.features.schema import ColumnMapping

        return ColumnMapping.parse(self.behavior_weights).values_as(float)

    @property
    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        return "sql" if self.time_decay_days else "blocks"
