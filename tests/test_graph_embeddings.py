"""Item graph, weighted walks, skip-gram / EGES and the build_graph_embeddings job."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from recfactory.graph.skipgram import centers_contexts
from recfactory.graph.walks import Graph, walk, walk_ids

# a small weighted directed graph with triangles, two-cycles and uneven weights
SRC = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 1])
DST = np.array([1, 2, 3, 0, 2, 0, 1, 4, 0, 4, 2, 3, 4])
W = np.array([1.0, 2.0, 3.0, 1.0, 5.0, 2.0, 1.0, 1.0, 4.0, 1.0, 1.0, 2.0, 2.0])


def test_graph_from_edges_sums_duplicates_and_refuses_bad_input():
    g = Graph.from_edges(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 1]), np.array([1.0, 2.0, 1.0, 9.0]), 2)
    assert g.indptr.tolist() == [0, 1, 2] and g.indices.tolist() == [1, 0] and g.weights.tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="weights"):
        Graph.from_edges(np.array([0]), np.array([1]), np.array([0.0]), 2)
    with pytest.raises(ValueError, match="endpoints"):
        Graph.from_edges(np.array([0]), np.array([2]), np.array([1.0]), 2)


@pytest.mark.parametrize("p,q", [(1.0, 1.0), (0.5, 2.0), (4.0, 0.25)])
def test_walk_transitions_match_node2vec_probabilities(p, q):
    """Second-order transitions (t, v) → x are ∝ w(v, x)·α(t, x): chi-square against the exact
    probabilities for every (t, v), first-order for the first step."""
    g = Graph.from_edges(SRC, DST, W, 5)
    w = {(s, d): x for s, d, x in zip(SRC, DST, W, strict=True)}
    walks = walk(g.arrays(), walk_ids(5, 30_000), 3, p, q, seed=11)
    second = Counter(zip(walks[:, 0], walks[:, 1], walks[:, 2], strict=True))
    first = Counter(zip(walks[:, 0], walks[:, 1], strict=True))
    pvalues = []
    for v in range(5):
        xs = [d for (s, d) in w if s == v]
        obs = np.array([first[(v, x)] for x in xs])
        exp = np.array([w[(v, x)] for x in xs])
        pvalues.append(chisquare(obs, exp / exp.sum() * obs.sum()).pvalue)
        for t in range(5):
            if (t, v) not in w:
                continue
            alpha = [1 / p if x == t else (1.0 if (t, x) in w else 1 / q) for x in xs]
            exp = np.array([w[(v, x)] * a for x, a in zip(xs, alpha, strict=True)])
            obs = np.array([second[(t, v, x)] for x in xs])
            pvalues.append(chisquare(obs, exp / exp.sum() * obs.sum()).pvalue)
    assert min(pvalues) > 1e-3, pvalues  # seeded: the same walks every run


def test_uniforms_are_a_pure_function_of_position():
    from recfactory.graph.sampling import uniforms

    full = uniforms(9, np.arange(20_000), 3, 1)
    assert np.array_equal(uniforms(9, np.arange(333, 400), 3, 1), full[333:400])
    assert not np.array_equal(full, uniforms(9, np.arange(20_000), 3, 2))
    assert ((full >= 0) & (full < 1)).all() and chisquare(np.bincount((full * 10).astype(int))).pvalue > 1e-3


def test_alias_tables_encode_the_row_distributions_exactly():
    from recfactory.graph.sampling import alias_tables

    rng = np.random.default_rng(3)
    deg = np.array([1, 2, 5, 17, 3])
    indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
    w = rng.random(indptr[-1]) * 10 + 0.01
    prob, alias = alias_tables(indptr, w)
    for v in range(len(deg)):
        lo, hi = indptr[v], indptr[v + 1]
        implied = np.zeros(hi - lo)
        for k in range(lo, hi):  # slot k: itself with prob[k], else its alias
            implied[k - lo] += prob[k]
            implied[alias[k] - lo] += 1 - prob[k]
        assert np.allclose(implied / deg[v], w[lo:hi] / w[lo:hi].sum(), atol=1e-12)


def test_unweighted_rows_draw_uniformly():
    src, dst = np.array([0, 0, 0, 1]), np.array([1, 2, 3, 0])
    g = Graph.from_edges(src, dst, np.ones(4), 4)
    out = walk(g.arrays(), np.zeros(30_000, dtype=np.int64), 2, seed=1)
    obs = np.bincount(out[:, 1], minlength=4)[1:]
    assert chisquare(obs).pvalue > 1e-3


def test_walks_stop_at_sinks_and_do_not_depend_on_sharding_or_threads():
    g = Graph.from_edges(np.array([0, 1]), np.array([1, 2]), np.array([1.0, 1.0]), 3)  # 0 → 1 → 2, 2 a sink
    out = walk(g.arrays(), walk_ids(3, 2, np.array([0, 1])), 4, seed=3)
    assert out.tolist() == [[0, 1, 2, -1], [1, 2, -1, -1]] * 2
    g = Graph.from_edges(SRC, DST, W, 5)
    ids = walk_ids(5, 50)
    whole = walk(g.arrays(), ids, 6, 0.5, 2.0, seed=5)
    parts = np.concatenate(
        [
            walk(g.arrays(), ids[pos], 6, 0.5, 2.0, seed=5, offset=int(pos[0]))
            for pos in np.array_split(np.arange(len(ids)), 7)
        ]
    )
    assert np.array_equal(whole, parts)
    assert np.array_equal(whole, walk(g.arrays(), ids, 6, 0.5, 2.0, seed=5, threads=2))
    assert not np.array_equal(whole, walk(g.arrays(), ids, 6, 0.5, 2.0, seed=6))


def test_centers_contexts_equal_brute_force_and_shrink_like_word2vec():
    walks = np.array([[0, 1, 2, 3], [4, 5, -1, -1]])
    c, x = centers_contexts(walks, 1, np.random.default_rng(0))
    got = sorted((a, b) for a, row in zip(c.tolist(), x.tolist(), strict=True) for b in row if b >= 0)
    want = sorted(
        (a, b)
        for row in walks.tolist()
        for i, a in enumerate(row)
        for j, b in enumerate(row)
        if abs(i - j) == 1 and a >= 0 and b >= 0
    )
    assert got == want and len(c) == 6  # every position with a context is a center
    # window 3: the center's window b ~ U{1..3}, so distance d is kept with probability (3 − d + 1)/3
    walks = np.tile(np.arange(10), (2000, 1))
    c, x = centers_contexts(walks, 3, np.random.default_rng(0))
    d = Counter(abs(a - b) for a, row in zip(c.tolist(), x.tolist(), strict=True) for b in row if b >= 0)
    assert d[1] == 2000 * 9 * 2 and abs(d[3] / (2000 * 7 * 2) - 1 / 3) < 0.02


@pytest.mark.parametrize("eges", [False, True])
def test_skipgram_step_descends_its_loss(eges):
    """The analytic step (row-wise Adagrad) and EGES's autograd step both lower the loss they
    report on a fixed batch."""
    import torch

    from recfactory.graph.skipgram import EGES, SkipGram

    torch.manual_seed(0)
    model = EGES(6, 8, np.arange(6)[:, None] % 2, [2]) if eges else SkipGram(6, 8)
    c, x = torch.tensor([0, 1, 2]), torch.tensor([[1, -1], [2, 0], [3, -1]])
    neg = torch.tensor([[4, 5], [5, 4], [4, 4]])
    first = model.step(c, x, neg, 0.2)
    assert abs(first - model.loss(c, x, neg).detach().item()) > 0  # the step changed the parameters
    for _ in range(50):
        last = model.step(c, x, neg, 0.2)
    assert last < first * 0.5


def test_skipgram_kernel_applies_adagrad_to_the_autograd_gradient():
    """The compiled SGNS update of one center equals row-wise Adagrad applied to the autograd
    gradient of `SkipGram.loss` (contexts and negatives weighted by the context count)."""
    import torch

    from recfactory.graph.skipgram import SkipGram

    torch.manual_seed(0)
    model = SkipGram(6, 8)
    torch.nn.init.normal_(model.ctx.weight, std=0.3)
    torch.nn.init.normal_(model.emb.weight, std=0.3)
    model.g_emb += 0.5
    model.g_ctx += 0.25
    c, x, neg = torch.tensor([0]), torch.tensor([[1, 2, -1]]), torch.tensor([[4, 5]])
    emb0, ctx0 = model.emb.weight.detach().clone(), model.ctx.weight.detach().clone()
    ge0, gc0 = model.g_emb.clone(), model.g_ctx.clone()
    loss = model.loss(c, x, neg)
    loss.backward()
    ge_, gc_ = model.emb.weight.grad.to_dense(), model.ctx.weight.grad.to_dense()
    got = model.step(c, x, neg, 0.1)
    assert got == pytest.approx(loss.item(), rel=1e-5)
    want_g_emb = ge0 + (ge_ * ge_).sum(1) / 8
    want_g_ctx = gc0 + (gc_ * gc_).sum(1) / 8
    want_emb = emb0 - 0.1 * ge_ / want_g_emb.sqrt().unsqueeze(1)
    want_ctx = ctx0 - 0.1 * gc_ / want_g_ctx.sqrt().unsqueeze(1)
    torch.testing.assert_close(model.g_emb, want_g_emb)
    torch.testing.assert_close(model.g_ctx, want_g_ctx)
    torch.testing.assert_close(model.emb.weight.detach(), want_emb)
    torch.testing.assert_close(model.ctx.weight.detach(), want_ctx)


def test_skipgram_training_is_seeded_and_independent_of_chunking():
    from recfactory.graph.embedding_spec import TrainSpec
    from recfactory.graph.skipgram import SkipGram, Unigram, keep_probability, train

    rng = np.random.default_rng(3)
    walks = rng.integers(0, 30, size=(200, 8)).astype(np.int32)
    walks[::7, 5:] = -1  # early stops
    spec = TrainSpec(dim=8, epochs=2, seed=4, sample=0.05)
    a, b, c = SkipGram(30, 8), SkipGram(30, 8), SkipGram(30, 8)
    for m in (a, b, c):
        m.load_state_dict(a.state_dict())
    la, lb = train(a, walks, spec, progress=False), train(b, walks, spec, progress=False)
    assert la == lb and np.array_equal(a.vectors(), b.vectors()) and la[1] < la[0]
    keep, noise = keep_probability(walks, 30, spec.sample), Unigram(walks, 30)
    order = np.random.default_rng(0).permutation(len(walks))
    d = SkipGram(30, 8)
    d.load_state_dict(c.state_dict())
    whole = c.fit_walks(walks, order, keep, noise, spec, 0)
    parts = [d.fit_walks(walks, part, keep, noise, spec, 0) for part in np.array_split(order, 7)]
    assert np.array_equal(c.vectors(), d.vectors())
    assert whole[1] == sum(p[1] for p in parts) and whole[0] == pytest.approx(sum(p[0] for p in parts))


def test_models_start_from_their_seed_not_from_torchs_global_generator():
    import torch

    from recfactory.graph.skipgram import EGES, SkipGram

    fields = np.arange(6)[:, None] % 2
    for make in (lambda s: SkipGram(6, 8, seed=s), lambda s: EGES(6, 8, fields, [2], seed=s)):
        torch.manual_seed(1)
        a = make(7).state_dict()
        torch.manual_seed(2)
        b, c = make(7).state_dict(), make(8).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["emb.weight"], c["emb.weight"])


def test_subsampling_keeps_word2vec_probabilities_and_closes_gaps():
    from recfactory.graph.skipgram import keep_probability, subsample

    walks = np.array([[0, 0, 0, 1], [0, 2, -1, -1]])
    keep = keep_probability(walks, 4, 0.1)
    f = np.array([4, 1, 1, 0]) / 6
    assert keep[0] == pytest.approx((np.sqrt(f[0] / 0.1) + 1) * 0.1 / f[0]) and keep[3] == 1.0
    out = subsample(walks, np.array([0.0, 1.0, 1.0, 1.0]), np.random.default_rng(0))
    assert out.tolist() == [[1, -1, -1, -1], [2, -1, -1, -1]]
    assert np.array_equal(keep_probability(walks, 4, 0.0), np.ones(4))


def _communities(k=4, size=25, seed=0):
    """A planted-partition graph: dense inside k communities, a few edges across."""
    rng = np.random.default_rng(seed)
    n = k * size
    comm = np.repeat(np.arange(k), size)
    src, dst = [], []
    for a in range(n):
        for b in range(n):
            if a != b and rng.random() < (0.3 if comm[a] == comm[b] else 0.005):
                src.append(a)
                dst.append(b)
    return Graph.from_edges(np.array(src), np.array(dst), np.ones(len(src)), n), comm


@pytest.mark.ray
def test_embeddings_recover_planted_communities_and_eges_places_cold_items():
    from recfactory.graph.embedding_spec import EmbeddingSpec
    from recfactory.graph.embeddings import fit, nearest
    from recfactory.graph.walks import random_walks
    from recfactory.jobs.runtime.ray_runtime import init_ray

    init_ray()
    g, comm = _communities()
    # cold nodes: the last 3 of every community lose their edges (EGES still knows their community)
    cold = np.concatenate([np.arange(c * 25 + 22, c * 25 + 25) for c in range(4)])
    keep = ~(np.isin(np.repeat(np.arange(g.n), g.degree()), cold) | np.isin(g.indices, cold))
    src = np.repeat(np.arange(g.n), g.degree())[keep]
    g = Graph.from_edges(src, g.indices[keep], g.weights[keep], g.n)
    a, b = random_walks(g, 3, 8, seed=1, shards=1), random_walks(g, 3, 8, seed=1, shards=5)
    assert np.array_equal(a, b)  # same walks whatever the number of Ray tasks
    spec = EmbeddingSpec(walks_per_node=10, walk_length=10, dim=16, epochs=3, seed=1)
    fitted = fit(g, comm[:, None], [4], ["community"], spec, seed=1, progress=False)
    warm = np.setdiff1d(np.arange(g.n), cold)
    for m, f in fitted.items():
        recs = nearest(f.vectors, f.has_vector, warm, 5)
        same = (comm[recs] == comm[warm][:, None]).mean()
        assert same > 0.8, (m, same)  # random: 0.25
        assert f.cold[cold].all() and not f.cold[warm].any()
    assert not fitted["deepwalk"].has_vector[cold].any()  # no walk: no vector, no pretending
    eges = fitted["eges"]
    assert eges.has_vector.all() and np.isfinite(eges.vectors).all()
    recs = nearest(eges.vectors, eges.has_vector, cold, 5)
    assert (comm[recs] == comm[cold][:, None]).mean() > 0.8
    assert set(eges.attention) == {"item_id", "community"}


@pytest.mark.spark
@pytest.mark.ray
def test_build_graph_embeddings_on_the_movielens_slice(spark, slice_ingested, tmp_path):
    from pyspark.sql import functions as F

    from recfactory.graph.item_graph import GraphSpec, build_edges
    from recfactory.jobs.runtime.job import run_job

    wh = slice_ingested(tmp_path / "wh")  # MovieLens users 1..200, every item, ingested as of 1998-04-30
    args = ["--warehouse", wh, "--as-of", "1998-04-30"]
    run_job("build_sessions", args, spark=spark)
    lgcn = ["--lightgcn-epochs", "2", "--lightgcn-workers", "1"]  # the wiring; its quality: test_lightgcn, the bench
    ctx = run_job("build_graph_embeddings", [*args, "--dim", "16", "--eval-k", "10,20", *lgcn], spark=spark)
    emb = spark.read.format("delta").load(f"{wh}/graph_embeddings")
    items = spark.read.format("delta").load(f"{wh}/items").select("item_id").distinct().count()
    assert emb.count() == 4 * items == ctx.row_counts["graph_embeddings"]
    by = {
        r["method"]: r
        for r in emb.groupBy("method")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(F.col("vector").isNull().cast("int")).alias("null"),
            F.sum(F.col("is_cold_start").cast("int")).alias("cold"),
            F.min(F.size("vector")).alias("dmin"),
        )
        .collect()
    }
    assert by["eges"]["null"] == 0 and by["eges"]["dmin"] == 16  # every item, cold ones too
    # cold = no walk visited the item: every item on no kept edge, and rarely a barely reachable one
    assert by["deepwalk"]["null"] == by["deepwalk"]["cold"] >= ctx.row_counts["cold_items"]
    assert by["eges"]["cold"] == by["deepwalk"]["cold"]  # the same walks
    graph = spark.read.format("delta").load(f"{wh}/item_graph")
    assert graph.count() == ctx.row_counts["edges"] and graph.where("src = dst").count() == 0
    # the edges equal a direct count of consecutive distinct items in valid sessions
    sessions = spark.read.format("delta").load(f"{wh}/sessions").where("is_valid").collect()
    direct = Counter((a, b) for s in sessions for a, b in zip(s["items"], s["items"][1:], strict=False) if a != b)
    got = {(r["src"], r["dst"]): r["transitions"] for r in graph.collect()}
    assert got == direct
    sess = spark.read.format("delta").load(f"{wh}/sessions").drop("ds")
    assert build_edges(sess, dt.datetime(1998, 5, 1), GraphSpec(min_weight=3)).where("kept").count() == sum(
        1 for v in direct.values() if v >= 3
    )
    m = ctx.metrics
    assert m["hr@20.deepwalk"] > m["hr@20.popularity"] and m["hr@20.eges"] > m["hr@20.popularity"]
    metrics = spark.read.format("delta").load(f"{wh}/graph_embedding_metrics")
    assert {r["method"] for r in metrics.where("split = 'next_item'").collect()} >= {
        "deepwalk",
        "node2vec",
        "eges",
        "lightgcn",
        "swing",
        "popularity",
    }
    # LightGCN: the positives visible as of the date, distinct (user, item); every item with one has a
    # vector, every user one row in user_embeddings, the U2I rows beside both baselines
    ev = spark.read.format("delta").load(f"{wh}/events_clean").where("ds <= date'1998-04-30'")  # ds: ts's UTC date
    pos = ev.where(F.col("event_type").isin("click", "like", "cart", "purchase", "share"))
    assert ctx.row_counts["u2i_pairs"] == pos.select("user_id", "item_id").distinct().count()
    lg = emb.where("method = 'lightgcn'")
    assert lg.where("vector is not null").count() == pos.select("item_id").distinct().count()
    assert by["lightgcn"]["null"] == by["lightgcn"]["cold"] and lg.where("size(vector) != 64").count() == 0
    users = spark.read.format("delta").load(f"{wh}/user_embeddings")
    assert users.count() == pos.select("user_id").distinct().count() == ctx.row_counts["user_embeddings"]
    assert users.where("size(vector) = 64 and method = 'lightgcn'").count() == users.count()
    u2i = {(r["method"], r["k"]): r for r in metrics.where("split = 'u2i'").collect()}
    assert set(u2i) == {(mth, k) for mth in ("lightgcn", "popularity", "itemcf") for k in (10, 20)}
    assert all(0 <= r["ndcg"] <= r["hit_rate"] <= 1 and r["pairs"] > 100 for r in u2i.values())
    assert ctx.notes["side_fields.0"].startswith("side field brand dropped")
