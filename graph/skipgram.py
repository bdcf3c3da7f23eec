"""Skip-gram with negative sampling over walks (DeepWalk / Node2Vec) and EGES, in torch.

``SkipGram`` is word2vec's SGNS (Mikolov et al. 2013) on node sequences: an input vector h and a
context ("output") vector c per node. Every walk position is a center v; its contexts are the nodes
at distance ≤ b, with b drawn uniformly in 1..window per center (word2vec's shrunk window), and it
draws ``negatives`` nodes from the unigram^0.75 distribution of the walks (word2vec's — PyG's
Node2Vec draws them uniformly). The loss of a center is

    −Σ_contexts log σ(h_v·c_u) − m_v · Σ_negatives log σ(−h_v·c_n)

with m_v its number of contexts: the negatives are shared by the center's pairs instead of drawn
per pair, which keeps the expected objective of per-pair SGNS (each pair still meets `negatives`
noise draws in expectation) and cuts the memory traffic of a step by ~2.5×.

Training is sparse: a step touches only the rows of its center, contexts and negatives, with
row-wise Adagrad — one accumulated squared-gradient scalar per row, the optimizer TorchRec/FBGEMM
use for embedding tables. The parameters are torch tables (``nn.Embedding``); the SGNS update runs
as one compiled kernel (numba, over the tables' memory, no copies) that walks the walks itself:
per center it gathers the window and the negatives, computes the gradient analytically and applies
it — word2vec's loop, sequential and so deterministic. Measured (dim 64, window 5, 5 negatives,
5 epochs; docs/bench/graph-*.md): a batched torch step (gathers, bmm, one sparse scatter per step)
took 1.5–1.8× gensim's 2-worker time; this kernel takes ~0.45× of it on one thread. Randomness is
counter-based (the walker's SplitMix64 of (seed, epoch·W + walk row, position, draw)), so a walk's
window draws, subsampling and negatives do not depend on how the epoch is chunked.

Frequent nodes are subsampled as in word2vec (``sample``, 1e-3 as gensim's default): a node of
walk frequency f is kept with probability (√(f/s) + 1)·s/f, the dropped positions removed before
windowing.

Why not PyG's ``Node2Vec`` model: it ties the input and context vectors (one table) and draws
negatives uniformly; both cost quality on popularity-skewed item graphs (and 2.8.1 refuses to start
without pyg-lib).

``EGES`` (Wang et al., KDD 2018) replaces the input vector by a per-item attention-weighted mix of
the item-id embedding and one embedding per side-information field (category, brand, ...):
H_v = Σ_j e^{a_vj} W_j[v] / Σ_j e^{a_vj}, a_v learned per item; the same loss on batches of
centers (``centers_contexts``), through torch autograd with SparseAdam. A cold item (no walk) gets the average of its side-information embeddings (the
paper's cold start).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import nn

from recfactory.graph.embedding_spec import TrainSpec
from recfactory.graph.sampling import alias_draw, alias_tables, draw_hash, draw_uniform


class Unigram:
    """Negative-sampling distribution: node frequency in the walks to the power 0.75 (word2vec's),
    drawn in O(1) from a Vose alias table (a binary search of the CDF took 10% of training)."""

    def __init__(self, walks: np.ndarray, n: int, power: float = 0.75):
        counts = np.bincount(walks[walks >= 0].ravel(), minlength=n).astype(np.float64)
        self.weights = counts**power
        self.empty = not self.weights.sum()
        prob, alias = alias_tables(np.array([0, n], dtype=np.int64), self.weights)
        self.prob_np, self.alias_np = prob, alias
        self.prob, self.alias = torch.as_tensor(prob), torch.as_tensor(alias)

    def draw(self, size: int, gen: torch.Generator) -> torch.Tensor:
        k = torch.randint(len(self.prob), (size,), generator=gen)
        coin = torch.rand(size, generator=gen, dtype=torch.float64)
        return torch.where(coin < self.prob[k], k, self.alias[k])


def subsample(walks: np.ndarray, keep: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """word2vec's subsampling of frequent nodes: each position is kept with its node's probability
    `keep`, and the kept nodes of a walk move left over the dropped ones (word2vec drops them
    before windowing, so windows reach past them); −1 pads the rest."""
    ok = (walks >= 0) & (gen.random(walks.shape) < keep[np.maximum(walks, 0)])
    order = np.argsort(~ok, axis=1, kind="stable")
    return np.where(np.take_along_axis(ok, order, 1), np.take_along_axis(walks, order, 1), -1)


def keep_probability(walks: np.ndarray, n: int, sample: float) -> np.ndarray:
    """word2vec's keep probability of a node of frequency f: (√(f/s) + 1)·s/f, capped at 1."""
    counts = np.bincount(walks[walks >= 0].ravel(), minlength=n).astype(np.float64)
    f = counts / max(counts.sum(), 1.0)
    if not sample:
        return np.ones(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, np.minimum(1.0, (np.sqrt(f / sample) + 1) * sample / f), 1.0)


def centers_contexts(walks: np.ndarray, window: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(centers, contexts): one row per walk position with at least one context; contexts is
    centers × 2·window, the nodes at offsets −window..window (0 excluded) within the center's
    shrunk window b ~ U{1..window}, −1 elsewhere and past the walk's end."""
    m, length = walks.shape
    offs = np.array([o for o in range(-window, window + 1) if o != 0])
    b = gen.integers(1, window + 1, size=(m, length))
    pos = np.arange(length)[:, None] + offs[None, :]  # L × 2w
    ctx = walks[:, np.clip(pos, 0, length - 1)]  # m × L × 2w
    ok = ((pos >= 0) & (pos < length))[None] & (np.abs(offs)[None, None, :] <= b[:, :, None])
    ctx = np.where(ok & (walks[:, :, None] >= 0), ctx, -1).reshape(m * length, -1)
    centers = walks.reshape(-1)
    keep = (centers >= 0) & (ctx >= 0).any(1)
    return centers[keep].astype(np.int64), ctx[keep].astype(np.int64)


@numba.njit(cache=True, fastmath=True)
def _center(emb, ctx, g_emb, g_ctx, v, slots, s, cnt, lr, h, gh, coef):
    """SGNS + row-wise Adagrad update of center v: slots[:cnt] its contexts, slots[cnt:s] its
    negatives (weighted by cnt, shared by the center's pairs). Returns the center's loss."""
    d = emb.shape[1]
    loss, hn = 0.0, 0.0
    for q in range(d):
        h[q] = emb[v, q]
        gh[q] = 0.0
        hn += h[q] * h[q]
    for t in range(s):
        u = slots[t]
        dot = 0.0
        for q in range(d):
            dot += h[q] * ctx[u, q]
        if t < cnt:
            sg = 1.0 / (1.0 + math.exp(-dot))  # σ(h·c)
            loss -= math.log(max(sg, 1e-30))
            coef[t] = sg - 1.0
        else:
            sg = 1.0 / (1.0 + math.exp(dot))  # σ(−h·n)
            loss -= cnt * math.log(max(sg, 1e-30))
            coef[t] = (1.0 - sg) * cnt
        for q in range(d):
            gh[q] += coef[t] * ctx[u, q]
    for t in range(s):  # all squared gradients first, as a batched step would
        g_ctx[slots[t]] += coef[t] * coef[t] * hn / d
    for t in range(s):
        u = slots[t]
        a = -lr * coef[t] / (math.sqrt(g_ctx[u]) + 1e-10)
        for q in range(d):
            ctx[u, q] += a * h[q]
    gn = 0.0
    for q in range(d):
        gn += gh[q] * gh[q]
    g_emb[v] += gn / d
    a = -lr / (math.sqrt(g_emb[v]) + 1e-10)
    for q in range(d):
        emb[v, q] += a * gh[q]
    return loss


@numba.njit(cache=True)
def _train_walks(emb, ctx, g_emb, g_ctx, walks, rows, keep, prob, alias, window, negatives, lr, seed, epoch):
    """One pass over walks[rows] in that order: subsampling, shrunk windows, alias negatives, and
    `_center` for every center with a context. Returns (summed loss, centers)."""
    length, nodes = walks.shape[1], len(prob)
    kept = np.empty(length, dtype=np.int64)
    slots = np.empty(2 * window + negatives, dtype=np.int64)
    coef = np.empty(2 * window + negatives)
    h = np.empty(emb.shape[1], dtype=emb.dtype)
    gh = np.empty(emb.shape[1], dtype=emb.dtype)
    total, centers = 0.0, 0
    for r in rows:
        pos = np.int64(epoch) * walks.shape[0] + r
        m = 0
        for j in range(length):
            v = walks[r, j]
            if v < 0:
                break
            if keep[v] < 1.0 and draw_uniform(seed, pos, j, 0) >= keep[v]:
                continue
            kept[m] = v
            m += 1
        for c in range(m):
            b = 1 + np.int64(draw_hash(seed, pos, c, 1) % np.uint64(window))
            s = 0
            for j in range(max(0, c - b), min(m, c + b + 1)):
                if j != c:
                    slots[s] = kept[j]
                    s += 1
            if s == 0:
                continue
            cnt = s
            for t in range(negatives):
                slots[s] = alias_draw(draw_hash(seed, pos, c, 2 + t), 0, nodes, prob, alias)
                s += 1
            total += _center(emb, ctx, g_emb, g_ctx, kept[c], slots, s, cnt, lr, h, gh, coef)
            centers += 1
    return total, centers


@numba.njit(cache=True)
def _train_batch(emb, ctx, g_emb, g_ctx, centers, contexts, negatives, lr):
    """`_center` over explicit (centers, contexts −1-padded, negatives) rows, in order."""
    w, k = contexts.shape[1], negatives.shape[1]
    slots = np.empty(w + k, dtype=np.int64)
    coef = np.empty(w + k)
    h = np.empty(emb.shape[1], dtype=emb.dtype)
    gh = np.empty(emb.shape[1], dtype=emb.dtype)
    total = 0.0
    for i in range(len(centers)):
        s = 0
        for j in range(w):
            if contexts[i, j] >= 0:
                slots[s] = contexts[i, j]
                s += 1
        if s == 0:
            continue
        cnt = s
        for j in range(k):
            slots[s] = negatives[i, j]
            s += 1
        total += _center(emb, ctx, g_emb, g_ctx, centers[i], slots, s, cnt, lr, h, gh, coef)
    return total


class SkipGram(nn.Module):
    """SGNS: input vectors `emb` (the output of the method) and context vectors `ctx`."""

    def __init__(self, n: int, dim: int, seed: int = 0):
        super().__init__()
        self.emb = nn.Embedding(n, dim, sparse=True)
        self.ctx = nn.Embedding(n, dim, sparse=True)
        # word2vec's initialisation, from the seed (not torch's process-global generator: a rerun, or
        # another machine, must start from the same vectors)
        gen = torch.Generator().manual_seed(seed)
        nn.init.uniform_(self.emb.weight, -0.5 / dim, 0.5 / dim, generator=gen)
        nn.init.zeros_(self.ctx.weight)
        self.register_buffer("g_emb", torch.zeros(n))  # row-wise Adagrad state
        self.register_buffer("g_ctx", torch.zeros(n))

    def input_vectors(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.emb(nodes)

    def loss(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Mean center loss (contexts −1 = none)."""
        h = self.input_vectors(centers)  # B × d
        mask = (contexts >= 0).float()
        pos = torch.bmm(self.ctx(contexts.clamp(min=0)), h.unsqueeze(-1)).squeeze(-1)  # B × 2w
        neg = torch.bmm(self.ctx(negatives), h.unsqueeze(-1)).squeeze(-1)  # B × k
        per = -(nn.functional.logsigmoid(pos) * mask).sum(1) - mask.sum(1) * nn.functional.logsigmoid(-neg).sum(1)
        return per.mean()

    def _tables(self):
        return (
            self.emb.weight.detach().numpy(),
            self.ctx.weight.detach().numpy(),
            self.g_emb.numpy(),
            self.g_ctx.numpy(),
        )

    @torch.no_grad()
    def step(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor, lr: float) -> float:
        """SGNS + row-wise Adagrad over the batch's centers, one after the other (the compiled
        kernel); returns their mean loss, each taken just before its own update."""
        c = centers.numpy().astype(np.int64)
        total = _train_batch(
            *self._tables(), c, contexts.numpy().astype(np.int64), negatives.numpy().astype(np.int64), float(lr)
        )
        return total / max(int((contexts >= 0).any(1).sum()), 1)

    def fit_walks(
        self, walks: np.ndarray, rows: np.ndarray, keep: np.ndarray, noise: Unigram, spec: TrainSpec, epoch: int
    ) -> tuple[float, int]:
        """One pass of the compiled kernel over walks[rows]: (summed loss, centers)."""
        with torch.no_grad():
            return _train_walks(
                *self._tables(),
                walks,
                rows,
                keep,
                noise.prob_np,
                noise.alias_np,
                spec.window,
                spec.negatives,
                float(spec.lr),
                np.uint64(spec.seed),
                epoch,
            )

    @torch.no_grad()
    def vectors(self) -> np.ndarray:
        return self.emb.weight.detach().cpu().numpy().astype(np.float32)


class EGES(SkipGram):
    """EGES: `fields` is an (n × F) int array of side-information codes (one column per field,
    code 0..vocab−1), `vocab` the per-field vocabulary sizes. Trained through autograd."""

    def __init__(self, n: int, dim: int, fields: np.ndarray, vocab: list[int], seed: int = 0):
        super().__init__(n, dim, seed)
        self.register_buffer("fields", torch.as_tensor(np.array(fields, dtype=np.int64).reshape(n, -1)))
        self.side = nn.ModuleList(nn.Embedding(v, dim, sparse=True) for v in vocab)
        gen = torch.Generator().manual_seed(seed + 1)
        for e in self.side:
            nn.init.uniform_(e.weight, -0.5 / dim, 0.5 / dim, generator=gen)
        self.attn = nn.Embedding(n, 1 + len(vocab), sparse=True)
        nn.init.zeros_(self.attn.weight)  # uniform attention at the start
        self._opt: torch.optim.Optimizer | None = None

    def _parts(self, nodes: torch.Tensor) -> torch.Tensor:
        f = self.fields[nodes]
        return torch.stack([self.emb(nodes), *[e(f[:, j]) for j, e in enumerate(self.side)]], dim=1)  # B × (1+F) × d

    def input_vectors(self, nodes: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.attn(nodes), dim=-1).unsqueeze(-1)  # e^{a_j} / Σ e^{a_j}
        return (a * self._parts(nodes)).sum(1)

    def step(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor, lr: float) -> float:
        if self._opt is None:
            params = [p for name, p in self.named_parameters()]
            self._opt = torch.optim.SparseAdam(params, lr=lr / 8)
        loss = self.loss(centers, contexts, negatives)
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        return loss.detach().item()

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


def train(model: SkipGram, walks: np.ndarray, spec: TrainSpec, progress: bool = True, threads: int = 0) -> list[float]:
    """Trains `model` on the walks; returns the mean center loss of each epoch. Seeded (spec.seed):
    the walk order, the subsampling, the window shrinking and the negatives come from seeded
    generators. ``threads``: torch's threads (0: torch's default)."""
    from tqdm.auto import tqdm

    if threads:
        torch.set_num_threads(threads)
    gen = np.random.default_rng(spec.seed)
    tgen = torch.Generator().manual_seed(spec.seed)
    n = model.emb.num_embeddings
    noise = Unigram(walks, n)
    if not len(walks) or noise.empty:
        return []
    keep = keep_probability(walks, n, spec.sample)
    losses = []
    if type(model) is SkipGram:
        walks = np.ascontiguousarray(walks, dtype=np.int32)
        chunks = max(1, math.ceil(len(walks) / max(spec.walks_per_batch * 64, 1)))  # progress granularity
        for epoch in range(spec.epochs):
            order = gen.permutation(len(walks))
            total, centers = 0.0, 0
            for part in tqdm(
                np.array_split(order, chunks),
                desc=f"skip-gram epoch {epoch + 1}/{spec.epochs}",
                disable=not progress,
                mininterval=5.0,
            ):
                t, c = model.fit_walks(walks, part, keep, noise, spec, epoch)
                total, centers = total + t, centers + c
            losses.append(total / max(centers, 1))
        return losses
    batches = math.ceil(len(walks) / spec.walks_per_batch)
    for epoch in range(spec.epochs):
        order = gen.permutation(len(walks))
        total, steps = 0.0, 0
        for b in tqdm(
            range(batches), desc=f"EGES epoch {epoch + 1}/{spec.epochs}", disable=not progress, mininterval=5.0
        ):
            chunk = walks[order[b * spec.walks_per_batch : (b + 1) * spec.walks_per_batch]]
            if spec.sample:
                chunk = subsample(chunk, keep, gen)
            c, x = centers_contexts(chunk, spec.window, gen)
            if not len(c):
                continue
            neg = noise.draw(len(c) * spec.negatives, tgen).view(-1, spec.negatives)
            total += model.step(torch.as_tensor(c), torch.as_tensor(x), neg, spec.lr)
            steps += 1
        losses.append(total / max(steps, 1))
    return losses
