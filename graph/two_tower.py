"""A small two-tower retrieval model (torch, on arrays): the check that ``retrieval_pairs`` is
useful to the trainer it is made for (issue 24, item 7). Not a production trainer.

Towers: an ID embedding per user and per item, L2-normalized, scored by cosine / temperature.

- ``fit_pairs``: sampled softmax over the batch's positives (in-batch negatives) and every row's
  corpus negatives from the table, each logit corrected by −log of its expected count in the
  sample (Yi et al., RecSys 2019): B · positive_q for an in-batch item, the row's count of the
  strategy · q for a corpus negative. The batch's other copies of a row's positive are masked.
- ``fit_uniform``: the same model and optimizer, a softmax over the positive and ``negatives``
  uniform items redrawn every epoch (no correction: q is constant) — the baseline.
"""

from __future__ import annotations

import numpy as np
import torch

from recfactory.features.spec import Field, Seeded


class TwoTowerSpec(Seeded):
    dim: int = Field(32, ge=2, description="Embedding dimension of both towers.")
    epochs: int = Field(20, ge=1, description="Epochs over the train rows.")
    batch_size: int = Field(512, ge=2, description="Rows per step.")
    lr: float = Field(0.01, gt=0, description="Adam learning rate.")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature of the cosine scores.")


class Towers(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.users = torch.nn.Parameter(torch.randn(n_users, dim, generator=g) * 0.1)
        self.items = torch.nn.Parameter(torch.randn(n_items, dim, generator=g) * 0.1)

    def user(self, u: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.users[u], dim=-1)

    def item(self, i: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.items[i], dim=-1)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            u = torch.nn.functional.normalize(self.users, dim=-1).numpy()
            i = torch.nn.functional.normalize(self.items, dim=-1).numpy()
        return u.astype(np.float32), i.astype(np.float32)


def _steps(n: int, spec: TwoTowerSpec, epoch: int):
    perm = np.random.default_rng([spec.seed, epoch]).permutation(n)
    for lo in range(0, n - 1, spec.batch_size):
        b = perm[lo : lo + spec.batch_size]
        if len(b) > 1:
            yield b


def fit_pairs(
    users: np.ndarray,
    items: np.ndarray,
    positive_q: np.ndarray,
    negatives: np.ndarray,
    negative_logq: np.ndarray,
    n_users: int,
    n_items: int,
    spec: TwoTowerSpec,
) -> tuple[np.ndarray, np.ndarray]:
    """Train rows (users, items) with their corpus ``negatives`` (rows x m item indices, -1 for
    none) and the log expected counts of those draws; returns the (user, item) vectors."""
    torch.manual_seed(spec.seed)
    model = Towers(n_users, n_items, spec.dim, spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    U, Iv, Q = torch.as_tensor(users), torch.as_tensor(items), torch.as_tensor(positive_q, dtype=torch.float32)
    N, NQ = torch.as_tensor(negatives), torch.as_tensor(negative_logq, dtype=torch.float32)
    for epoch in range(spec.epochs):
        for b in _steps(len(users), spec, epoch):
            bt = torch.as_tensor(b)
            u, pos = model.user(U[bt]), Iv[bt]
            inb = u @ model.item(pos).T / spec.temperature - torch.log(len(b) * Q[bt].clamp_min(1e-12))[None, :]
            same = (pos[None, :] == pos[:, None]) & ~torch.eye(len(b), dtype=torch.bool)
            inb = inb.masked_fill(same, float("-inf"))
            neg = N[bt]
            corpus = (u[:, None, :] * model.item(neg.clamp_min(0))).sum(-1) / spec.temperature - NQ[bt]
            corpus = corpus.masked_fill(neg < 0, float("-inf"))
            loss = torch.nn.functional.cross_entropy(torch.cat([inb, corpus], 1), torch.arange(len(b)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.vectors()


def fit_uniform(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, negatives: int, spec: TwoTowerSpec
) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: a softmax over the positive and ``negatives`` uniform items per row, redrawn
    every epoch (seeded)."""
    torch.manual_seed(spec.seed)
    model = Towers(n_users, n_items, spec.dim, spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    U, Iv = torch.as_tensor(users), torch.as_tensor(items)
    g = torch.Generator().manual_seed(spec.seed + 1)
    for epoch in range(spec.epochs):
        for b in _steps(len(users), spec, epoch):
            bt = torch.as_tensor(b)
            u = model.user(U[bt])
            cand = torch.cat([Iv[bt][:, None], torch.randint(0, n_items, (len(b), negatives), generator=g)], 1)
            logits = (u[:, None, :] * model.item(cand)).sum(-1) / spec.temperature
            dup = torch.cat([torch.zeros(len(b), 1, dtype=torch.bool), cand[:, 1:] == cand[:, :1]], 1)
            logits = logits.masked_fill(dup, float("-inf"))  # a draw of the positive itself
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(b), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.vectors()
