"""LightGCN user and item embeddings (He et al., SIGIR 2020) on arrays: PyG's ``LightGCN`` on the
user–item bipartite graph of positive interactions, BPR with seeded negatives, trained on Ray
Train (``TorchTrainer``, DDP over CPU workers, gloo). No Spark and no I/O here: the job hands it
index arrays and a checkpoint location.

- Graph: users are nodes ``0..U-1``, items ``U..U+I-1``; every distinct (user, item) positive is
  an edge in both directions, propagated by PyG's ``LGConv`` over the symmetrically normalized
  adjacency as a sparse CSR matrix (no weights, no non-linearity: the paper's model). The final
  embedding of a node is the mean of its layer-0..L embeddings (PyG's ``alpha = 1 / (L + 1)``).
- Training: an epoch is a seeded permutation of the positives, cut into ``batch_size`` × workers
  steps; each positive (u, i) gets one negative j drawn uniformly from the items u has no positive
  with — a function of (seed, epoch, position) only, whichever batch or worker the positive lands
  in; BPR loss with the paper's L2 on the layer-0 embeddings of the batch's nodes (PyG's
  ``BPRLoss``, as ``LightGCN.recommendation_loss``), Adam. Every worker propagates the whole graph
  (replicated) and takes its share of the triples; DDP averages the gradients. With one intra-op
  thread per worker the vectors are the same for a fixed worker count.
- Checkpoints: every ``lightgcn_checkpoint_every`` epochs (and after the last), under storage/name;
  a run of the same name resumes after its last checkpoint and ends bitwise where a straight run
  ends (so a caller that keys the name by its inputs and spec resumes a rerun of the same inputs).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from recfactory.features.draws import counter_uniform
from recfactory.graph.lightgcn_spec import LightGCNSpec
from recfactory.graph.ray_train import checkpoint, load_final, restore, run_torch, shard_steps


def edge_index(users: np.ndarray, items: np.ndarray, n_users: int) -> torch.Tensor:
    """The bipartite graph's 2 × 2E edge index: user u → item node n_users + i and back, one
    edge per distinct (u, i)."""
    pairs = np.unique(np.stack([np.asarray(users, np.int64), np.asarray(items, np.int64)], axis=1), axis=0)
    u, i = pairs[:, 0], pairs[:, 1] + n_users
    return torch.as_tensor(np.stack([np.concatenate([u, i]), np.concatenate([i, u])]), dtype=torch.long)


def negatives(users: np.ndarray, positions: np.ndarray, pos_keys: np.ndarray, n_items: int, seed: int, epoch: int):
    """One negative item per (user, position) of an epoch: uniform over the items the user has no
    positive with (``pos_keys``: the sorted ``user * n_items + item`` keys of every positive).
    A pure function of (seed, epoch, position), so a positive's negative does not depend on the
    batch or the worker it lands on; redrawn (another round's draw) while it hits a positive."""
    users = np.asarray(users, np.int64)
    out = np.empty(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    for attempt in range(64):
        u = counter_uniform(seed, "lightgcn-negative", epoch, attempt, positions[todo])
        cand = np.minimum((u * n_items).astype(np.int64), n_items - 1)
        keys = users[todo] * n_items + cand
        at = np.minimum(np.searchsorted(pos_keys, keys), max(len(pos_keys) - 1, 0))
        bad = pos_keys[at] == keys if len(pos_keys) else np.zeros(len(keys), bool)
        out[todo[~bad]] = cand[~bad]
        todo = todo[bad]
        if not len(todo):
            return out
    raise ValueError(f"{len(todo)} users have a positive with (nearly) every item: no negative to draw")


def normalized_adjacency(index: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph as a sparse CSR matrix: LGConv's propagation as one
    sparse-dense product per layer (measured on MovieLens-100K: 10x faster than message passing
    over the edge index, which materializes an edge x dim tensor per layer)."""
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    ei, w = gcn_norm(index, None, n_nodes, add_self_loops=False)
    coo = torch.sparse_coo_tensor(ei, w, (n_nodes, n_nodes), check_invariants=True).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is what is used
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return coo.to_sparse_csr()


class BPRModel(torch.nn.Module):
    """PyG's LightGCN, and a forward that scores a batch of (user, positive, negative) node
    triples: one forward per step, so DDP all-reduces every gradient of it (the L2 term too)."""

    def __init__(self, n_nodes: int, spec: LightGCNSpec):
        from torch_geometric.nn.models import LightGCN

        super().__init__()
        self.gcn = LightGCN(n_nodes, spec.lightgcn_dim, spec.lightgcn_layers)
        for conv in self.gcn.convs:  # the adjacency comes normalized (normalized_adjacency)
            conv.normalize = False

    def forward(self, adj: torch.Tensor, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor):
        out = self.gcn.get_embedding(adj)
        eu = out[u]
        ego = self.gcn.embedding.weight[torch.unique(torch.cat([u, i, j]))]
        return (eu * out[i]).sum(-1), (eu * out[j]).sum(-1), ego


def _batches(n: int, batch: int, world: int, rank: int, epoch: int, seed: int):
    """This worker's positions of an epoch: one seeded permutation of the positives (the same on
    every worker), cut into world x batch steps; a positive past the last whole step waits for
    another epoch's permutation."""
    perm = np.argsort(counter_uniform(seed, "lightgcn-epoch", epoch, np.arange(n)), kind="stable")
    return shard_steps(perm, batch, world, rank)


def _train_loop(config: dict) -> None:
    """Ray Train worker loop: this worker's BPR steps of every epoch, a checkpoint (rank 0) every
    ``lightgcn_checkpoint_every`` epochs and after the last, resuming after the run's last one."""
    import logging

    import ray
    import ray.train
    import ray.train.torch
    from torch_geometric.nn.models.lightgcn import BPRLoss

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    data = ray.get(config["data"])
    spec = LightGCNSpec(**config["spec"])
    torch.set_num_threads(config.get("threads", 1))
    torch.manual_seed(spec.seed)
    n_users, n_items = int(data["n_users"]), int(data["n_items"])
    users, items = data["users"], data["items"]
    pos_keys = np.unique(users * n_items + items)
    adj = normalized_adjacency(edge_index(users, items, n_users), n_users + n_items)
    model = ray.train.torch.prepare_model(BPRModel(n_users + n_items, spec))
    core = cast(BPRModel, getattr(model, "module", model))  # DDP wraps it
    opt = torch.optim.Adam(model.parameters(), lr=spec.lightgcn_lr)
    bpr = BPRLoss(spec.lightgcn_l2)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    start, history = restore(core, opt)
    for epoch in range(start, spec.lightgcn_epochs):
        total, steps = 0.0, 0
        for pos in _batches(len(users), spec.lightgcn_batch_size, world, rank, epoch, spec.seed):
            u = users[pos]
            j = negatives(u, pos, pos_keys, n_items, spec.seed, epoch)
            pos_rank, neg_rank, ego = model(
                adj, torch.as_tensor(u), torch.as_tensor(items[pos] + n_users), torch.as_tensor(j + n_users)
            )
            loss = bpr(pos_rank, neg_rank, ego)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        history.append({"epoch": epoch, "loss": total / max(steps, 1)})
        checkpoint(core, opt, epoch, history, spec.lightgcn_checkpoint_every, spec.lightgcn_epochs)


@dataclass
class Trained:
    users: np.ndarray  # n_users x dim float32: the final (layer-mean) embeddings
    items: np.ndarray  # n_items x dim float32
    history: list[dict]  # per epoch: loss
    checkpoint: str  # where the run's checkpoints live


def fit(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, spec: LightGCNSpec, storage: str, name: str
) -> Trained:
    """LightGCN on the positives (user index, item index) on Ray Train: a TorchTrainer with DDP
    over ``spec.lightgcn_workers`` CPU workers (one intra-op thread each). Checkpoints under
    storage/name; a run of the same name resumes after its last checkpoint. On the caller's Ray
    (the job starts it)."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    if len(users) == 0:
        raise ValueError("LightGCN needs at least one positive interaction")
    if users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items:
        raise ValueError("user and item indices must lie in [0, n_users) and [0, n_items)")
    data = {"users": users, "items": items, "n_users": n_users, "n_items": n_items}
    result = run_torch(_train_loop, data, spec.to_dict(), spec.lightgcn_workers, storage, name)
    model = BPRModel(n_users + n_items, spec)
    history = load_final(result, model, name)
    with torch.no_grad():
        out = model.gcn.get_embedding(normalized_adjacency(edge_index(users, items, n_users), n_users + n_items))
    out = out.numpy().astype(np.float32)
    return Trained(out[:n_users], out[n_users:], history, os.path.join(storage, name))


@dataclass
class Evaluation:
    rows: list[tuple[str, int, float, float, float, int]]  # (method, K, Recall@K, NDCG@K, coverage@K, users)
    trained: Trained  # the model of the training split (its item vectors: the i2i next-item evaluation)
    has_item: np.ndarray  # bool per item: a training positive of that model (its vector means something)


def evaluate(
    users: np.ndarray,
    items: np.ndarray,
    ts: np.ndarray,
    n_users: int,
    n_items: int,
    spec: LightGCNSpec,
    storage: str,
    name: str,
    ks: tuple[int, ...],
    also_held: np.ndarray | None = None,
    neighbours: int = 100,
) -> Evaluation:
    """U2I on a leave-last-out split of the distinct positives (``graph.u2i``): LightGCN trained on
    the rest, beside popularity and ItemCF U2I (the sum of ItemCF similarities, top ``neighbours``
    per item, to the user's items) on the same training positives; each user's seen items filtered.
    ``also_held`` (a mask over the rows): positives kept out of every model's training as well (the
    i2i next-item test pairs) but still filtered as seen."""
    from recfactory.graph.u2i import (
        itemcf_neighbours,
        leave_last_out,
        recall_ndcg,
        recommend_dot,
        recommend_neighbours,
        recommend_popular,
        seen_matrix,
    )

    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    train, test = leave_last_out(users, items, ts)
    fit_rows = train & ~also_held if also_held is not None else train
    tu, ti = users[test], items[test]
    seen = seen_matrix(users[train], items[train], n_users, n_items)
    kmax = max(ks)
    trained = fit(users[fit_rows], items[fit_rows], n_users, n_items, spec, storage, name)
    fu, fi = users[fit_rows], items[fit_rows]
    recs = {
        "lightgcn": recommend_dot(trained.users, trained.items, tu, seen, kmax),
        "popularity": recommend_popular(np.bincount(fi, minlength=n_items), tu, seen, kmax),
        "itemcf": recommend_neighbours(itemcf_neighbours(fu, fi, n_items, neighbours), tu, seen, kmax),
    }
    n_train_items = len(np.unique(fi))
    rows = []
    for method, r in recs.items():
        scores = recall_ndcg(r, ti, ks)
        for k in ks:
            top = r[:, :k]
            cov = len(np.unique(top[top >= 0])) / n_train_items if n_train_items else 0.0
            rows.append((method, int(k), scores[k][0], scores[k][1], cov, len(tu)))
    return Evaluation(rows, trained, np.bincount(fi, minlength=n_items) > 0)
