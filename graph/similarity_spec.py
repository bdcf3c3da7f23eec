"""The parameters of item-to-item similarity (``graph.similarity`` on Spark, ``graph.similarity_sparse``
on SciPy): the algorithms, the behaviour weights, the filters and caps, the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from recfactory.features.schema import POSITIVE_EVENT_TYPES

ALGOS = ("swing", "swing_simple", "itemcf", "itemcf_iuf")


@dataclass(frozen=True)
class SimilaritySpec:
    algos: tuple[str, ...] = ALGOS
    event_types: tuple[str, ...] = POSITIVE_EVENT_TYPES
    behavior_weights: dict[str, float] = field(default_factory=dict)  # event type → weight (default 1)
    swing_alpha: float = 1.0
    user_alpha: float = 5.0
    user_beta: float = -0.35
    simple_alpha: float = 1.0
    time_decay_days: float = 0.0
    min_user_items: int = 2
    max_user_items: int = 5000
    max_items_per_user: int = 200
    max_users_per_item: int = 1000
    top_k: int = 100
    engine: str = "auto"  # auto | sql | blocks (auto: blocks unless time decay is on)
    blocks: int = 0  # item blocks of the blocks engine; 0: one per PAIRS_PER_BLOCK pairs
    seed: int = 42

    def __post_init__(self):
        bad = [a for a in self.algos if a not in ALGOS]
        if bad or not self.algos:
            raise ValueError(f"unknown algos {bad}; choose from {', '.join(ALGOS)}")
        if self.swing_alpha < 0 or self.simple_alpha < 0 or self.user_alpha < 0:
            raise ValueError("alphas must be >= 0")
        if not 1 <= self.min_user_items <= self.max_user_items:
            raise ValueError("need 1 <= min_user_items <= max_user_items")
        if self.max_items_per_user < 2 or self.max_users_per_item < 2 or self.top_k < 1:
            raise ValueError("max_items_per_user and max_users_per_item must be >= 2, top_k >= 1")
        if self.time_decay_days < 0:
            raise ValueError("time_decay_days must be >= 0")
        if any(w <= 0 for w in self.behavior_weights.values()):
            raise ValueError("behavior weights must be > 0")
        if self.engine not in ("auto", "sql", "blocks") or self.blocks < 0:
            raise ValueError("engine must be auto, sql or blocks; blocks >= 0 (0: automatic)")
        if self.engine == "blocks" and self.time_decay_days:
            raise ValueError("the blocks engine has no time decay: use --engine sql")

    @property
    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        return "sql" if self.time_decay_days else "blocks"
