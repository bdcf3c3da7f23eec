"""The semantic-ID run's pure core (tokenizers/sid_generation.py, sid_outputs.py), without Spark or
Ray: the vector checks, which date a run continues, a first run and a continued one, metrics against
direct formulas, gates, the output frames against their schemas."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from recfactory.tokenizers import sid_generation as G
from recfactory.tokenizers.rq import RQSpec, fit

GSPEC = G.SidSpec(reassign_candidates=4).rules()


def _vectors(n=600, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.array([f"i{k:04d}" for k in range(n)], dtype=object)


def test_each_bad_embedding_row_is_quarantined_with_its_reason_and_rows_reconcile():
    vecs = [[1.0, 0.0], None, [0.0, 0.0], [np.nan, 1.0], [1.0, 2.0, 3.0], [0.0, 3.0], [5.0, 5.0], [1.0, 1.0]]
    ids = ["b", "c", "d", "e", "f", "a", None, "a"]
    out_ids, X, q = G.check_vectors(np.array(ids, dtype=object), np.array(vecs, dtype=object), normalize=True)
    assert list(out_ids) == ["b"] and np.allclose(X, [[1.0, 0.0]])
    assert dict(zip(q["item_id"].fillna("<null>"), q["reason"], strict=True)) == {
        "c": "null vector",
        "d": "zero vector",
        "e": "non-finite vector values",
        "f": "vector length differs from the table's 2",
        "<null>": "null item_id",
        "a": "item_id appears more than once (narrow it with --embedding-filter)",
    }
    assert len(out_ids) + len(q) == len(vecs)


def test_a_continued_run_keeps_every_published_sid_and_encodes_the_new_items():
    X, ids = _vectors()
    spec = RQSpec(codebook_sizes=(8, 8), seed=1)
    books = fit(X, spec)
    first = G.assign(ids, X, G.plan(ids, None, True, spec.levels), books, spec, GSPEC, None, seed=1)
    assert len(set(first.sid)) == len(ids) and first.in_catalog.all() and not first.fixed.any()
    state = pd.DataFrame(
        {
            "item_id": first.item_of,
            "rq_codes": list(first.rq_codes),
            "codes": list(first.final),
            "suffix": first.suffix,
            "assigned_ds": dt.date(2026, 1, 1),
            "sid": first.sid,
        }
    )
    # the next day: 100 items left, 50 new ones (near existing vectors)
    X2 = np.vstack([X[100:], X[:50] + 0.01])
    ids2 = np.concatenate([ids[100:], np.array([f"n{k:03d}" for k in range(50)], dtype=object)])
    order = np.argsort(ids2, kind="stable")
    X2, ids2 = X2[order], ids2[order]
    plan = G.plan(ids2, state, False, spec.levels)
    assert len(plan.kept) == len(ids) and len(plan.new_rows) == 50
    nxt = G.assign(ids2, X2, plan, books, spec, GSPEC, first.removed, seed=1)
    kept = pd.Series(nxt.sid[: len(ids)], index=nxt.item_of[: len(ids)])
    assert (kept.reindex(ids).to_numpy() == first.sid).all()  # nobody published moves
    assert len(set(nxt.sid)) == len(nxt.sid) == len(ids) + 50
    assert nxt.in_catalog.sum() == len(ids2) and (~nxt.in_catalog).sum() == 100  # the gone keep their SID
    m, flat = G.metrics(
        X2[pd.Series(np.arange(len(ids2)), index=ids2).reindex(nxt.item_of[nxt.in_catalog])], nxt, books, None, 1.5, 0.5
    )
    total = m[m["level"] == 0].iloc[0]
    assert (total["new_items"], total["kept_items"], total["removed_items"]) == (50, len(ids2) - 50, 100)
    assert flat["new_items"] == 50 and flat["fit_seconds"] == 1.5 and flat["collision_rate_after"] == 0.0
    # the level-2 reconstruction error against its direct formula
    inc = nxt.in_catalog
    Xi = X2[pd.Series(np.arange(len(ids2)), index=ids2).reindex(nxt.item_of[inc]).to_numpy()]
    rec = sum(books.centroids[lv][nxt.rq_codes[inc][:, lv]] for lv in range(2))
    assert m[m["level"] == 2]["recon_error"].iloc[0] == pytest.approx(np.linalg.norm(Xi - rec, axis=1).mean(), rel=1e-5)


def test_gates_name_what_failed():
    m = pd.DataFrame(
        [
            {"level": 0, "collision_rate_before": 0.7, "relative_recon_error": 0.95},
            {"level": 1, "utilization": 0.05, "prefix_recall": 0.1, "prefix_recall_random": 0.2},
            {"level": 2, "utilization": 0.5, "prefix_recall": np.nan, "prefix_recall_random": np.nan},
        ]
    )
    removed = [np.zeros(4, bool), np.zeros(4, bool)]
    failed = G.gate_failures(m, removed, G.SidGates())
    assert len(failed) == 4 and failed[0].startswith("collision rate before handling 0.7000 > 0.5")
    assert any(f.startswith("level 1 uses 0.050") for f in failed)
    assert (
        G.gate_failures(
            m,
            removed,
            G.SidGates(
                gate_max_collision_rate=1.0,
                gate_min_utilization=0.0,
                gate_max_relative_recon_error=1.0,
                gate_min_recall_lift=0.0,
            ),
        )
        == []
    )


def test_codebook_rows_round_trip_and_neighbour_rows_index_the_items():
    from types import SimpleNamespace

    from recfactory.tokenizers.rq import Codebooks
    from recfactory.tokenizers.sid_outputs import codebook_frame, codebooks_from_frame, neighbor_rows

    rng = np.random.default_rng(0)
    spec = RQSpec(codebook_sizes=(4, 3), seed=1)
    books = Codebooks([rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)])
    codes = np.array([[0, 1], [0, 2], [3, 1], [3, 1], [1, 0]])
    removed = [np.array([False, True, False, False]), np.zeros(3, dtype=bool)]
    a = SimpleNamespace(encoding=SimpleNamespace(codes=codes), removed=removed)
    frame = codebook_frame("g1", books, a, spec, {"rq": spec.to_dict()})
    assert list(frame["fit_items"]) == [2, 1, 0, 2, 1, 3, 1]  # per level, per code
    cents, rem, gspec = codebooks_from_frame(frame.sample(frac=1, random_state=3), "g1")
    assert all(np.array_equal(c, b) for c, b in zip(cents, books.centroids, strict=True))
    assert [r.tolist() for r in rem] == [m.tolist() for m in removed] and gspec == {"rq": spec.to_dict()}
    with pytest.raises(AssertionError, match="more than one centroid"):
        codebooks_from_frame(pd.concat([frame, frame.iloc[:1]]), "g1")

    items = np.array(["a", "b", "c"], dtype=object)
    pairs = pd.DataFrame({"a": ["a", "a", "b", "x", "c"], "b": ["b", "c", "a", "a", "zz"]})
    got = neighbor_rows(pairs, items)
    assert [r.tolist() for r in got] == [[1, 2], [0], []]


def test_a_date_continues_the_day_before_only_and_a_gap_names_the_missing_date():
    day = dt.date.fromisoformat

    def published(*pairs):
        return pd.DataFrame([(day(d), g) for d, g in pairs], columns=["ds", "generation"])

    chain = published(("2026-01-01", "2026-01-01.aa"), ("2026-01-02", "2026-01-01.aa"))
    assert G.prior_date(day("2026-01-03"), chain, False)[0] == day("2026-01-02")
    assert G.prior_date(day("2026-01-02"), chain, True)[0] == day("2026-01-01")  # a refit still remaps
    # nothing before the date (a backfill before the first chain, or the first run): a chain of its own
    assert G.prior_date(day("2025-12-01"), chain, False) == (None, None)
    assert G.prior_date(day("2026-01-01"), chain, False) == (None, None)
    with pytest.raises(G.MissingPriorDateError, match="semantic IDs of 2026-01-04, which has none, while 2026-01-02"):
        G.prior_date(day("2026-01-05"), chain, False)
    assert G.prior_date(day("2026-01-05"), chain, True)[0] is None  # --new-generation: a new chain
    # a rerun of a date that started its chain, after an earlier date was backfilled before it
    backfilled = published(("2025-12-01", "2025-12-01.bb"), ("2026-01-01", "2026-01-01.aa"))
    assert G.prior_date(day("2026-01-01"), backfilled, False) == (None, "none: 2026-01-01 started its chain (rerun)")


def test_every_output_frame_has_its_tables_columns_in_order():
    from recfactory.tokenizers import sid_outputs as O

    X, ids = _vectors(n=200)
    spec = G.SidSpec(codebook_sizes=(8, 8), reassign_candidates=4, seed=1)
    books = fit(X, RQSpec.of(spec))
    plan = G.plan(ids, None, True, spec.levels)
    a = G.assign(ids, X, plan, books, RQSpec.of(spec), spec.rules(), None, seed=1)
    metrics, _ = G.metrics(X, a, books, None, 0.0, 0.0)
    q = pd.DataFrame({"item_id": ["x"], "reason": ["null vector"]})
    day = dt.date(2026, 1, 2)
    gspec = {"rq": RQSpec.of(spec).to_dict(), **spec.rules()}
    state = O.state_frame(a, plan, "2026-01-01.aa", dt.date(2026, 1, 1))
    frames = O.outputs(
        True, a, plan, "2026-01-02.bb", day, books, spec, gspec, (state, "2026-01-01.aa"), q, metrics, 64
    )
    assert list(frames) == list(O.SCHEMAS)
    for table, frame in frames.items():
        columns = [c.strip().split(" ")[0] for c in O.SCHEMAS[table].split(",")]
        assert list(frame.columns) == columns, table
    assert set(frames["sid_remap"]["old_sid"]) == set(state["sid"])
    continued = O.outputs(
        False, a, plan, "2026-01-01.aa", day, books, spec, gspec, (state, "2026-01-01.aa"), q, metrics, 64
    )
    assert "sid_codebooks" not in continued and "sid_remap" not in continued
