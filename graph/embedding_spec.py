"""The parameters of the graph embeddings (``graph.embeddings``: walks on ``graph.walks``, skip-gram
and EGES on ``graph.skipgram``): the methods, the walks, the training. Apart from the models, so
that what declares parameters (a job's Params, the Airflow DAG files, the CLI's help) imports
neither torch nor numba."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from recfactory.features.spec import Field, Seeded

Method = Literal["deepwalk", "node2vec", "eges", "lightgcn"]
METHODS: tuple[Method, ...] = ("deepwalk", "node2vec", "eges", "lightgcn")
WALK_METHODS: tuple[Method, ...] = ("deepwalk", "node2vec", "eges")  # the ones `fit` trains


class TrainSpec(Seeded):
    """Skip-gram / EGES training (word2vec's defaults where they apply)."""

    dim: int = Field(64, ge=2, description="Embedding dimension.")
    window: int = Field(5, ge=1, description="Skip-gram window (word2vec: 5).")
    negatives: int = Field(5, ge=1, description="Negatives per positive pair, from unigram^0.75.")
    epochs: int = Field(5, ge=1, description="Passes over the walks (word2vec: 5).")
    lr: float = Field(0.2, gt=0, description="Row-wise Adagrad learning rate (EGES: SparseAdam at lr/8).")
    sample: float = Field(
        1e-3,
        ge=0,
        lt=1,
        description="word2vec's subsampling of frequent nodes: a node of walk "
        "frequency f is kept with probability (√(f/s) + 1)·s/f; 0: off.",
    )
    walks_per_batch: int = Field(256, ge=1, description="EGES: walks whose positions form one training step.")


class EmbeddingSpec(TrainSpec):
    """The walks and the methods; the training (``TrainSpec``) is shared by every method."""

    methods: tuple[Method, ...] = Field(METHODS, min_length=1, description="Embedding methods.")
    walks_per_node: int = Field(10, ge=1, description="Walks started at every node with out-edges.")
    walk_length: int = Field(20, ge=2, description="Nodes per walk (DeepWalk: 40; shorter on session graphs).")
    p: float = Field(1.0, gt=0, description="Node2Vec return parameter (1/p weights going back).")
    q: float = Field(0.5, gt=0, description="Node2Vec in-out parameter (1/q weights moving away; < 1: DFS-like).")
    shards: int = Field(
        0,
        ge=0,
        description="Walk shards (Ray tasks); 0: one per CPU (more past 1M walks each). Never changes the walks.",
    )

    @field_validator("methods")
    @classmethod
    def _once_each(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))
