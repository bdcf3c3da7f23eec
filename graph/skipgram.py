"""Skip-gram with negative sampling over walks (DeepWalk / Node2Vec) and EGES, in torch.

``SkipGram`` is word2vec's SGNS (Mikolov et al. 2013) on node sequences: an input vector and a
context ("output") vector per node, loss −log σ(h_v·c_u) − Σ_negatives log σ(−h_v·c_n) for every
pair (v, u) at distance ≤ window in a walk, the distance shrunk at random per pair as word2vec does
(a pair at distance d is kept with probability (window − d + 1) / window), negatives drawn from the
unigram^0.75 distribution of the walks (word2vec's, not uniform as PyG's Node2Vec draws them).
Embeddings are ``sparse=True`` and trained with SparseAdam: a step touches only the rows of its
batch.

Why not PyG's ``Node2Vec`` model: it ties the input and context vectors (one table) and draws
negatives uniformly; both cost quality on popularity-skewed item graphs. PyG's skip-gram loss is
the same formula as ``SkipGram.loss`` with tied tables.

``EGES`` (Wang et al., KDD 2018) replaces the input vector by a per-item attention-weighted mix of
the item-id embedding and one embedding per side-information field (category, brand, ...):
H_v = Σ_j e^{a_vj} W_j[v] / Σ_j e^{a_vj}, a_v learned per item. A cold item (no walk) gets the
average of its side-information embeddings (the paper's cold start).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TrainSpec:
    dim: int = 64
    window: int = 5
    negatives: int = 5
    epochs: int = 5
    lr: float = 0.025
    batch_size: int = 4096
    walks_per_chunk: int = 4096     # walks turned into pairs and shuffled together
    threads: int = 0                # torch threads; 0: torch's default
    seed: int = 0

    def __post_init__(self):
        if min(self.dim, self.window, self.negatives, self.epochs, self.batch_size, self.walks_per_chunk) < 1:
            raise ValueError("dim, window, negatives, epochs, batch_size, walks_per_chunk must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


class SkipGram(nn.Module):
    """SGNS: input vectors `emb` (the output of the method) and context vectors `ctx`."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(n, dim, sparse=True)
        self.ctx = nn.Embedding(n, dim, sparse=True)
        nn.init.uniform_(self.emb.weight, -0.5 / dim, 0.5 / dim)   # word2vec's initialisation
        nn.init.zeros_(self.ctx.weight)

    def input_vectors(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.emb(nodes)

    def loss(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        h = self.input_vectors(center)                                    # B × d
        pos = (h * self.ctx(context)).sum(-1)                             # B
        neg = torch.bmm(self.ctx(negatives), h.unsqueeze(-1)).squeeze(-1)  # B × k
        return -(nn.functional.logsigmoid(pos) + nn.functional.logsigmoid(-neg).sum(-1)).mean()

    @torch.no_grad()
    def vectors(self) -> np.ndarray:
        return self.emb.weight.detach().cpu().numpy().astype(np.float32)


class EGES(SkipGram):
    """EGES: `fields` is an (n × F) int array of side-information codes (one column per field,
    code 0..vocab−1), `vocab` the per-field vocabulary sizes."""

    def __init__(self, n: int, dim: int, fields: np.ndarray, vocab: list[int]):
        super().__init__(n, dim)
        self.register_buffer("fields", torch.as_tensor(np.array(fields, dtype=np.int64).reshape(n, -1)))
        self.side = nn.ModuleList(nn.Embedding(v, dim, sparse=True) for v in vocab)
        for e in self.side:
            nn.init.uniform_(e.weight, -0.5 / dim, 0.5 / dim)
        self.attn = nn.Embedding(n, 1 + len(vocab), sparse=True)
        nn.init.zeros_(self.attn.weight)   # uniform attention at the start

    def _parts(self, nodes: torch.Tensor) -> torch.Tensor:
        f = self.fields[nodes]
        return torch.stack([self.emb(nodes), *[e(f[:, j]) for j, e in enumerate(self.side)]], dim=1)  # B × (1+F) × d

    def input_vectors(self, nodes: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.attn(nodes), dim=-1).unsqueeze(-1)     # e^{a_j} / Σ e^{a_j}
        return (a * self._parts(nodes)).sum(1)

    @torch.no_grad()
    def vectors(self, cold: np.ndarray | None = None) -> np.ndarray:
        """H_v for every node; the cold nodes' rows from their side information alone."""
        nodes = torch.arange(self.emb.num_embeddings)
        out = torch.cat([self.input_vectors(c) for c in nodes.split(65536)])
        if cold is not None and len(cold) and len(self.side):
            c = torch.as_tensor(np.asarray(cold, dtype=np.int64))
            out[c] = self._parts(c)[:, 1:].mean(1)
        return out.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def attention(self, nodes: np.ndarray) -> np.ndarray:
        """Mean attention weight per field (item id first) over `nodes`."""
        if not len(nodes):
            return np.zeros(1 + len(self.side))
        a = torch.softmax(self.attn(torch.as_tensor(np.asarray(nodes, dtype=np.int64))), dim=-1)
        return a.mean(0).numpy()


def unigram_table(walks: np.ndarray, n: int, power: float = 0.75) -> torch.Tensor:
    """Negative-sampling weights: node frequency in the walks to the power 0.75 (word2vec)."""
    counts = np.bincount(walks[walks >= 0].ravel(), minlength=n).astype(np.float64)
    return torch.as_tensor(counts ** power)


def context_pairs(walks: np.ndarray, window: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) for every pair at distance ≤ window in the walks (both directions), a pair at
    distance d kept with probability (window − d + 1) / window; −1 padding never pairs."""
    cs, xs = [], []
    for d in range(1, min(window, walks.shape[1] - 1) + 1):
        a, b = walks[:, :-d].ravel(), walks[:, d:].ravel()
        ok = (a >= 0) & (b >= 0)
        if d > 1:
            ok &= gen.random(a.size) < (window - d + 1) / window
        a, b = a[ok], b[ok]
        cs += [a, b]
        xs += [b, a]
    if not cs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(cs).astype(np.int64), np.concatenate(xs).astype(np.int64)


def train(model: SkipGram, walks: np.ndarray, spec: TrainSpec, progress: bool = True) -> list[float]:
    """Trains `model` on the walks; returns the mean loss of each epoch. Seeded (spec.seed): the walk
    order, the window shrinking and the negatives are drawn from seeded generators."""
    from tqdm.auto import tqdm

    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    gen = np.random.default_rng(spec.seed)
    tgen = torch.Generator().manual_seed(spec.seed)
    n = model.emb.num_embeddings
    noise = unigram_table(walks, n)
    if noise.sum() == 0:
        return []
    opt = torch.optim.SparseAdam(list(model.parameters()), lr=spec.lr)
    losses = []
    chunks = math.ceil(len(walks) / spec.walks_per_chunk)
    for epoch in range(spec.epochs):
        order = gen.permutation(len(walks))
        total, batches = 0.0, 0
        for c in tqdm(range(chunks), desc=f"skip-gram epoch {epoch + 1}/{spec.epochs}", disable=not progress,
                      mininterval=5.0):
            center, context = context_pairs(walks[order[c * spec.walks_per_chunk:(c + 1) * spec.walks_per_chunk]],
                                            spec.window, gen)
            perm = gen.permutation(center.size)
            center, context = torch.as_tensor(center[perm]), torch.as_tensor(context[perm])
            for s in range(0, center.numel(), spec.batch_size):
                cb, xb = center[s:s + spec.batch_size], context[s:s + spec.batch_size]
                neg = torch.multinomial(noise, cb.numel() * spec.negatives, replacement=True, generator=tgen)
                loss = model.loss(cb, xb, neg.view(-1, spec.negatives))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().item()
                batches += 1
        losses.append(total / max(batches, 1))
    return losses
