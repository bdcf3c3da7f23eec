"""LightGCN (graph.lightgcn) and the U2I evaluation (graph.u2i): the pure parts against brute
force, the training on real Ray Train on a planted-structure graph."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from subproc import result_of

from recfactory.graph import u2i
from recfactory.graph.lightgcn import _batches, edge_index, negatives, normalized_adjacency


def test_leave_last_out_holds_out_each_users_last_positive():
    rng = np.random.default_rng(0)
    users, items, ts = rng.integers(0, 30, 400), rng.integers(0, 50, 400), rng.integers(0, 20, 400)
    train, test = u2i.leave_last_out(users, items, ts)
    df = pd.DataFrame({"u": users, "i": items, "t": ts})
    want = set()
    for _, g in df.groupby("u"):
        if len(g) >= 2:
            want.add(g.sort_values(["t", "i"], kind="stable").index[-1])
    assert set(test) == want and train.sum() == len(users) - len(want) and not train[test].any()
    # a function of the rows, not of their order
    perm = rng.permutation(len(users))
    _, test2 = u2i.leave_last_out(users[perm], items[perm], ts[perm])
    held = lambda idx, p=None: sorted(
        zip(users[idx] if p is None else users[p][idx], ts[idx] if p is None else ts[p][idx], strict=True)
    )  # noqa: E731
    assert held(test) == held(test2, perm)


def test_recommenders_rank_by_score_and_never_return_a_seen_item():
    rng = np.random.default_rng(1)
    n_users, n_items, k = 12, 25, 5
    uv, iv = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    su, si = rng.integers(0, n_users, 60), rng.integers(0, n_items, 60)
    seen = u2i.seen_matrix(su, si, n_users, n_items)
    users = np.arange(n_users)
    nb = rng.random((n_items, n_items)) * (rng.random((n_items, n_items)) < 0.2)
    import scipy.sparse as sp

    got = {
        "dot": u2i.recommend_dot(uv, iv, users, seen, k, batch=5),
        "pop": u2i.recommend_popular(np.bincount(si, minlength=n_items), users, seen, k, batch=5),
        "nb": u2i.recommend_neighbours(sp.csr_matrix(nb), users, seen, k, batch=5),
    }
    for u in users:
        mine = set(si[su == u])
        scores = {
            "dot": {i: uv[u] @ iv[i] for i in range(n_items)},
            "pop": {i: float((si == i).sum()) for i in range(n_items)},
            "nb": {i: sum(nb[j, i] for j in mine) for i in range(n_items)},
        }
        for name, s in scores.items():
            cand = [i for i in range(n_items) if i not in mine and (name != "nb" or s[i] > 0)]
            want = sorted(cand, key=lambda i: (-s[i], i))[:k]
            want += [-1] * (k - len(want))
            assert got[name][u].tolist() == want, (name, u)


def test_recall_and_ndcg_of_one_held_out_item():
    recs = np.array([[3, 1, 2], [5, 6, 7], [9, -1, -1]])
    m = u2i.recall_ndcg(recs, np.array([1, 4, 9]), [1, 3])
    assert m[1] == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert m[3] == (pytest.approx(2 / 3), pytest.approx((1 / np.log2(3) + 1) / 3))


def test_negatives_are_unseen_uniform_and_a_function_of_the_position():
    rng = np.random.default_rng(2)
    n_items = 40
    users, items = rng.integers(0, 10, 300), rng.integers(0, n_items, 300)
    keys = np.unique(users * n_items + items)
    pos = np.arange(len(users))
    neg = negatives(users, pos, keys, n_items, seed=7, epoch=3)
    assert not np.isin(users * n_items + neg, keys).any() and neg.min() >= 0 and neg.max() < n_items
    # the same draw for a position whichever batch asks for it; another epoch or seed: others
    half = negatives(users[150:], pos[150:], keys, n_items, seed=7, epoch=3)
    assert (half == neg[150:]).all()
    assert (negatives(users, pos, keys, n_items, seed=7, epoch=4) != neg).mean() > 0.5
    # uniform over each user's unseen items: a user with few positives draws every item about alike
    u0 = np.zeros(20000, np.int64)
    draws = negatives(u0, np.arange(20000), np.array([0, 1], np.int64), n_items, seed=1, epoch=0)
    counts = np.bincount(draws, minlength=n_items)
    assert counts[:2].sum() == 0 and counts[2:].min() > 0.8 * 20000 / 38 and counts[2:].max() < 1.2 * 20000 / 38


def test_batches_split_one_permutation_between_the_workers():
    for world in (1, 2, 3):
        seen = [np.concatenate(list(_batches(1000, 64, world, r, epoch=5, seed=1))) for r in range(world)]
        allp = np.concatenate(seen)
        assert len(np.unique(allp)) == len(allp) and len({len(s) for s in seen}) == 1
        assert len(allp) > 1000 - 64 * world
    one = np.concatenate(list(_batches(1000, 64, 1, 0, epoch=5, seed=1)))
    assert (one != np.concatenate(list(_batches(1000, 64, 1, 0, epoch=6, seed=1)))).any()


def test_adjacency_is_the_symmetric_normalization_of_the_bipartite_graph():
    users, items, n_users, n_items = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 0, 1, 0]), 3, 2
    adj = normalized_adjacency(edge_index(users, items, n_users), n_users + n_items).to_dense().numpy()
    a = np.zeros((5, 5))
    for u, i in set(zip(users.tolist(), items.tolist(), strict=True)):  # one edge per distinct pair
        a[u, n_users + i] = a[n_users + i, u] = 1
    d = a.sum(1)
    np.testing.assert_allclose(adj, a / np.sqrt(np.outer(d, d)), rtol=1e-6)


FIT_SCRIPT = """
import json, sys
import numpy as np
from recfactory.graph.lightgcn import LightGCNSpec, fit
from recfactory.jobs.runtime.ray_runtime import init_ray

out, name, runs = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")]
d = np.load(out + "/data.npz")
init_ray()
histories = []
for epochs in runs:  # the same run name: a longer run resumes after the shorter one's last epoch
    spec = LightGCNSpec(lightgcn_dim=16, lightgcn_epochs=epochs, lightgcn_batch_size=256, lightgcn_lr=0.01, seed=3,
                        lightgcn_checkpoint_every=3)
    t = fit(d["users"], d["items"], int(d["n_users"]), int(d["n_items"]), spec, out + "/ckpt", name)
    histories.append(t.history)
np.savez(out + f"/{name}.npz", users=t.users, items=t.items)
print("RESULT " + json.dumps(histories))
"""


def _planted(seed: int = 0):
    """Four communities of 40 users and 30 items: a user's positives are nine items of its own
    community and one of another; a global popularity skew across the communities' items."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(160):
        c = u // 40
        own = rng.choice(30, size=9, replace=False, p=np.linspace(2, 1, 30) / np.linspace(2, 1, 30).sum())
        other = rng.integers(0, 30) + 30 * ((c + 1 + rng.integers(0, 3)) % 4)
        for t, i in enumerate([*(30 * c + own), other]):
            users.append(u)
            items.append(int(i))
            ts.append(int(rng.integers(0, 1000)) if t else 1000)  # the first own item comes last
    return np.array(users), np.array(items), np.array(ts)


@pytest.mark.ray
def test_lightgcn_on_ray_train_finds_the_communities_resumes_and_repeats_bitwise(tmp_path):
    """Two workers (DDP). A run resumed from its epoch-3 checkpoint equals one trained straight to
    epoch 6, bitwise; the held-out items (one own-community item per user) rank far better than
    popularity. In fresh interpreters: Ray Train V2 (2.60) can stall a third trainer of a driver."""
    users, items, ts = _planted()
    train, test = u2i.leave_last_out(users, items, ts)
    np.savez(tmp_path / "data.npz", users=users[train], items=items[train], n_users=160, n_items=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RECFACTORY_TMP"] = str(tmp_path / "t")
    hist = {}
    for name, runs in (("resumed", "3,6"), ("straight", "6")):
        res = subprocess.run(
            [sys.executable, "-c", FIT_SCRIPT, str(tmp_path), name, runs],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        hist[name] = result_of(res.stdout)
    a, b = np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "straight.npz")
    assert (a["users"] == b["users"]).all() and (a["items"] == b["items"]).all()
    assert hist["resumed"][0] == hist["straight"][0][:3] and hist["resumed"][1] == hist["straight"][0]
    assert [h["epoch"] for h in hist["straight"][0]] == list(range(6))
    assert hist["straight"][0][-1]["loss"] < hist["straight"][0][0]["loss"]
    seen = u2i.seen_matrix(users[train], items[train], 160, 120)
    tu, ti = users[test], items[test]
    lgcn = u2i.recall_ndcg(u2i.recommend_dot(b["users"], b["items"], tu, seen, 10), ti, [10])[10]
    counts = np.bincount(items[train], minlength=120)
    pop = u2i.recall_ndcg(u2i.recommend_popular(counts, tu, seen, 10), ti, [10])[10]
    assert lgcn[0] > 2 * pop[0] and lgcn[1] > 2 * pop[1], (lgcn, pop)
