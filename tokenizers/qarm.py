"""QARM item alignment (Kuaishou, "QARM: Quantitative Alignment Multi-Modal Recommendation"):
a projector trained so that frozen content vectors match user-item behaviour. Arrays in, arrays
out — no Spark, no I/O (the job ``align_embeddings`` feeds it).

- ``Projector``: an MLP over the frozen content vector fused with learned side-information
  embeddings (category, brand, price bucket), plus a linear skip from the content vector, output
  L2-normalised.
- Positive pairs: I2I — an item and its high-score Swing neighbours; U2I — for each positive
  target of a user, the trigger is the most similar item, in the ID embedding space (graph
  embeddings), among the user's latest ``window`` positives before it (``u2i_pairs``).
- Loss (``info_nce``): in-batch InfoNCE, both directions, with a learnable temperature (the OneRec
  tokenizer's L_I2I; CLIP's clamp at 100), where in-batch "negatives" that are themselves positive
  pairs — or the same item — are masked out (no false negatives).
- Training (``fit``) runs on Ray Train: a ``TorchTrainer`` with DDP over CPU workers (gloo),
  seeded, a checkpoint per epoch; rerunning the same run name resumes from its last checkpoint.
- ``recall_at_k``: the gate's measure — held-out pairs (a, b): is b among a's K nearest items.
- ``simtier``: SimTier (Taobao, "Enhancing Taobao Display Advertising with Multimodal
  Representations"): the histogram of cos(target, history item) over N equal buckets of [−1, 1].
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recfactory.graph.ray_train import checkpoint, load_final, restore, run_torch, shard_steps
from recfactory.tokenizers.qarm_spec import AlignSpec


class Projector(nn.Module):
    def __init__(self, in_dim: int, vocab: list[int], spec: AlignSpec):
        super().__init__()
        self.side = nn.ModuleList(nn.Embedding(v, spec.side_dim) for v in vocab)
        width = in_dim + spec.side_dim * len(vocab)
        self.mlp = nn.Sequential(nn.Linear(width, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, spec.out_dim))
        self.skip = nn.Linear(in_dim, spec.out_dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / spec.temperature)))

    def forward(self, content: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        side = [e(codes[:, j]) for j, e in enumerate(self.side)]
        z = self.skip(content) + self.mlp(torch.cat([content, *side], dim=1))
        return nn.functional.normalize(z, dim=1)

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique keys of the unordered pairs {a, b} (both orders), for false-negative masking."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return np.unique(np.concatenate([a * n + b, b * n + a]))


def info_nce(
    za: torch.Tensor,
    zb: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    keys: torch.Tensor,
    n: int,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric in-batch InfoNCE over pairs (a_i, b_i); logits (a_i, b_j) for j ≠ i are masked
    when (a_i, b_j) is a known positive pair or b_j is the item a_i or b_i (false negatives)."""
    logits = (za @ zb.T) * scale
    k = a[:, None] * n + b[None, :]
    pos = torch.searchsorted(keys, k.reshape(-1)).clamp(max=max(len(keys) - 1, 0))
    known = (keys[pos] == k.reshape(-1)).reshape(k.shape) if len(keys) else torch.zeros_like(k, dtype=torch.bool)
    same = (b[None, :] == b[:, None]) | (b[None, :] == a[:, None])
    eye = torch.eye(len(a), dtype=torch.bool)
    logits = logits.masked_fill((known | same) & ~eye, float("-inf"))
    target = torch.arange(len(a))
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def u2i_pairs(items: np.ndarray, id_vectors: np.ndarray, has_vector: np.ndarray, window: int = 50) -> np.ndarray:
    """One user's positives in time order (node indices) → (trigger, target, position) rows: for
    every target with an ID vector, the trigger is the item most similar to it (cosine in the ID
    space) among the latest `window` positives before it, other than the target itself (the
    earliest wins a tie). Targets without a candidate give no row."""
    out = []
    unit = id_vectors / np.maximum(np.linalg.norm(id_vectors, axis=1, keepdims=True), 1e-12)
    for t in range(1, len(items)):
        tgt = items[t]
        if not has_vector[tgt]:
            continue
        cand = items[max(0, t - window) : t]
        cand = cand[(cand != tgt) & has_vector[cand]]
        if not len(cand):
            continue
        out.append((cand[int(np.argmax(unit[cand] @ unit[tgt]))], tgt, t))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def recall_at_k(
    vectors: np.ndarray, valid: np.ndarray, a: np.ndarray, b: np.ndarray, ks: tuple[int, ...]
) -> dict[int, float]:
    """Share of held-out pairs (a, b) whose b is among a's K nearest valid items by cosine (a
    itself excluded); pairs whose a or b has no vector count as misses."""
    from recfactory.graph.embeddings import nearest
    from recfactory.graph.u2i import hit_rate

    return hit_rate(nearest(vectors, valid, np.asarray(a), max(ks)), np.asarray(b), ks)


def simtier(target: np.ndarray, history: np.ndarray, buckets: int) -> np.ndarray:
    """Counts of cos(target, h) over `buckets` equal bins of [−1, 1] for the history rows h."""
    if not len(history):
        return np.zeros(buckets, dtype=np.int32)
    t = target / max(np.linalg.norm(target), 1e-12)
    h = history / np.maximum(np.linalg.norm(history, axis=1, keepdims=True), 1e-12)
    cos = np.clip(h @ t, -1.0, 1.0)
    idx = np.minimum(((cos + 1.0) / 2.0 * buckets).astype(np.int64), buckets - 1)
    return np.bincount(idx, minlength=buckets).astype(np.int32)


def _batches(n_pairs: int, batch: int, world: int, rank: int, epoch: int, seed: int):
    """This worker's index batches of an epoch: the same seeded permutation on every worker, cut
    into world × batch steps (every worker takes the same number of steps)."""
    return shard_steps(np.random.default_rng([seed, epoch]).permutation(n_pairs), batch, world, rank)


def _train_loop(config: dict) -> None:
    """Ray Train worker loop: this worker's share of every epoch, a checkpoint (rank 0) every
    `checkpoint_every` epochs, resuming after the run's last checkpoint."""
    import logging

    import ray
    import ray.train
    import ray.train.torch

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    data = ray.get(config["data"])
    spec = AlignSpec(**config["spec"])
    torch.set_num_threads(config.get("threads", 1))
    torch.manual_seed(spec.seed)
    content, codes = torch.as_tensor(data["content"]), torch.as_tensor(data["codes"])
    pairs, keys, n = data["pairs"], torch.as_tensor(data["keys"]), len(data["content"])
    model = Projector(content.shape[1], data["vocab"], spec)
    model = ray.train.torch.prepare_model(model)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    core = getattr(model, "module", model)  # DDP wraps it
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    start, history = restore(core, opt)
    for epoch in range(start, spec.epochs):
        total, steps = 0.0, 0
        for idx in _batches(len(pairs), spec.batch_size, world, rank, epoch, spec.seed):
            a, b = torch.as_tensor(pairs[idx, 0]), torch.as_tensor(pairs[idx, 1])
            ab = torch.cat([a, b])
            za, zb = model(content[ab], codes[ab]).split(len(a))  # one forward per step (DDP)
            loss = info_nce(za, zb, a, b, keys, n, core.scale())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        history.append({"epoch": epoch, "loss": total / max(steps, 1), "temperature": float(1 / core.scale().detach())})
        checkpoint(core, opt, epoch, history, spec.checkpoint_every, spec.epochs)


@dataclass
class Aligned:
    model: Projector
    history: list[dict]  # per epoch: loss, temperature
    checkpoint: str | None  # where the run's checkpoints live


def fit(
    content: np.ndarray,
    codes: np.ndarray,
    vocab: list[int],
    pairs: np.ndarray,
    spec: AlignSpec,
    storage: str,
    name: str,
) -> Aligned:
    """Trains the projector on Ray Train (TorchTrainer, DDP over `spec.workers` CPU workers).
    `pairs` (P × 2 node indices) are the positives; their keys mask false negatives. Checkpoints
    go to storage/name; a run of the same name resumes from its last completed epoch. On the
    caller's Ray (the job starts it; Ray Train starts a local one if there is none)."""
    n = len(content)
    data = {
        "content": np.ascontiguousarray(content, dtype=np.float32),
        "codes": np.asarray(codes, dtype=np.int64),
        "vocab": list(vocab),
        "pairs": np.asarray(pairs, dtype=np.int64),
        "keys": pair_keys(pairs[:, 0], pairs[:, 1], n),
    }
    result = run_torch(_train_loop, data, spec.to_dict(), spec.workers, storage, name)
    model = Projector(content.shape[1], list(vocab), spec)
    history = load_final(result, model, name)
    return Aligned(model.eval(), history, os.path.join(storage, name))


@torch.no_grad()
def project(model: Projector, content: np.ndarray, codes: np.ndarray, batch: int = 8192) -> np.ndarray:
    out = [
        model(torch.as_tensor(content[i : i + batch], dtype=torch.float32), torch.as_tensor(codes[i : i + batch]))
        for i in range(0, len(content), batch)
    ]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.skip.out_features), np.float32)
