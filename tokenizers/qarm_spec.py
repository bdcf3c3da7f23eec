"""QARM alignment's parameters (``tokenizers.qarm``), apart from its model: what declares
parameters (a job's Params, the Airflow DAG files, the CLI's help) imports it without torch."""

from __future__ import annotations

from recfactory.features.spec import Field, Seeded


class AlignSpec(Seeded):
    out_dim: int = Field(128, ge=2, description="Aligned vector dimension.")
    hidden: int = Field(512, ge=1, description="Projector MLP hidden width.")
    side_dim: int = Field(16, ge=1, description="Side-information embedding width per field.")
    batch_size: int = Field(512, ge=2, description="Pairs per worker per step (in-batch negatives: batch − 1).")
    epochs: int = Field(20, ge=1, description="Passes over the training pairs.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    temperature: float = Field(0.07, gt=0, lt=1, description="Initial InfoNCE temperature (learned).")
    workers: int = Field(2, ge=1, description="Ray Train workers (DDP over CPU, gloo).")
    checkpoint_every: int = Field(5, ge=1, description="Epochs between checkpoints (and the last one).")
