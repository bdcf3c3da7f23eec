"""build_sids: item embeddings → semantic IDs (+ codebooks, lookup, token features, metrics), ds = as-of.

    spark-submit jobs/build_sids.py --warehouse W --as-of 1998-04-30
    spark-submit jobs/build_sids.py --warehouse W --as-of D --new-generation        # weekly refit

Balanced RQ-KMeans (``recfactory.tokenizers.rq``) over the date's partition of an embedding table
(``aligned_embeddings`` by default; any table with an item id and a float-array column, filtered by
``--embedding-filter``), then hourglass mitigation, collision handling, metrics and quality gates
(``recfactory.tokenizers.sids``).

**Generations.** A generation is one set of codebooks. The first run, and every run with
``--new-generation``, fits new codebooks on a seeded sample (bottom-k of a hash of the item id: the
same sample whatever the partitioning) in a Ray task, encodes every item, and — when there was a
previous generation — writes ``sid_remap`` (old SID → new SID per item). Other runs keep the
current generation (its spec and codebooks are read back from ``sid_codebooks``): published items
keep their SIDs whatever their vectors do now, new items are encoded with every capacity counting
the published items, and collision handling never moves a published item. Items that left the
embedding table keep their row (``in_catalog`` false) and their SID stays reserved.

**Chains.** A date continues the state published for the previous date (``semantic_ids`` ds = D − 1),
so rerunning a date after later ones gives its first run's rows. A date with no state before it
starts a chain of its own; a date whose previous date has no state while earlier dates do fails,
naming the missing date (the DAG's ``depends_on_past`` runs dates in order). A generation's id is
``<fit date>.<hash of its spec and centroids>`` (``generation_id``): unique across dates and runs,
and a (generation, level, code) names exactly one centroid.

**Gates** (before anything is written): collision rate before handling, codebook utilization per
level, relative reconstruction error, and the level-1 prefix recall of behaviour neighbours over
its random baseline (when ``item_similarity`` has the date). SIDs are unique after handling by
construction, and the job asserts it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.draws import seeded_sample
from recfactory.features.filters import filter_column, parse_filter
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import TABLE_NAME, Field, JobParams, Restricted
from recfactory.tokenizers import sids as S
from recfactory.tokenizers.rq import Codebooks, RQSpec

WRITERS = {"aligned_embeddings": "align_embeddings", "graph_embeddings": "build_graph_embeddings",
           "content_embeddings": "build_content_embeddings"}

SID_SCHEMA = T.StructType([
    T.StructField("item_id", T.StringType(), False), T.StructField("codes", T.ArrayType(T.IntegerType()), False),
    T.StructField("suffix", T.IntegerType(), False), T.StructField("sid", T.StringType(), False),
    T.StructField("generation", T.StringType(), False), T.StructField("rq_codes", T.ArrayType(T.IntegerType()), False),
    T.StructField("in_catalog", T.BooleanType(), False), T.StructField("assigned_ds", T.DateType(), False),
])
CODEBOOK_SCHEMA = T.StructType([
    T.StructField("generation", T.StringType(), False), T.StructField("level", T.IntegerType(), False),
    T.StructField("code", T.IntegerType(), False), T.StructField("centroid", T.ArrayType(T.FloatType()), False),
    T.StructField("removed", T.BooleanType(), False), T.StructField("fit_items", T.LongType(), False),
    T.StructField("spec", T.StringType(), False),
])
LOOKUP_SCHEMA = T.StructType([
    T.StructField("sid", T.StringType(), False), T.StructField("item_id", T.StringType(), False),
    T.StructField("generation", T.StringType(), False), T.StructField("in_catalog", T.BooleanType(), False),
])
FEATURE_SCHEMA = T.StructType([
    T.StructField("item_id", T.StringType(), False), T.StructField("generation", T.StringType(), False),
    T.StructField("sid", T.StringType(), False), T.StructField("prefix_ngram_ids", T.ArrayType(T.LongType()), False),
    T.StructField("bigram_ids", T.ArrayType(T.LongType()), False), T.StructField("vocab_size", T.LongType(), False),
])
REMAP_SCHEMA = T.StructType([
    T.StructField("item_id", T.StringType(), False), T.StructField("old_generation", T.StringType(), False),
    T.StructField("old_sid", T.StringType(), False), T.StructField("new_generation", T.StringType(), False),
    T.StructField("new_sid", T.StringType()),
])
QUARANTINE_SCHEMA = T.StructType([
    T.StructField("item_id", T.StringType()), T.StructField("reason", T.StringType(), False),
])
LEVEL_METRICS = ("codebook_size", "items", "utilization", "entropy", "perplexity", "max_entropy", "gini",
                 "top_token_share", "max_code_size", "mean_code_size", "removed_tokens", "recon_error",
                 "relative_recon_error", "prefix_recall", "prefix_recall_random")
TOTAL_METRICS = ("collision_rate_before", "collision_rate_after", "max_items_per_sid_before", "sid_gini_before",
                 "sid_gini_after", "moved", "fell_back_fraction", "candidates_full_items", "new_items", "kept_items",
                 "removed_items", "new_recon_error", "kept_recon_error", "fit_seconds", "encode_seconds")
METRICS_SCHEMA = T.StructType([T.StructField("generation", T.StringType(), False),
                               T.StructField("level", T.IntegerType(), False)]
                              + [T.StructField(m, T.DoubleType()) for m in LEVEL_METRICS + TOTAL_METRICS])


class MissingPriorDateError(ValueError):
    """The previous date's state is missing while earlier dates have some: run that date first."""


def generation_id(as_of, gspec: dict, centroids: list[np.ndarray]) -> str:
    """A generation's identity: its fit date and a hash of what it fixes (the spec and every
    centroid). Unique across dates and runs; a rerun that fits the same codebooks gets the same id
    (and replaces the same rows), one that fits different codebooks gets another, so a
    (generation, level, code) always names exactly one centroid."""
    h = hashlib.sha256(json.dumps(gspec, sort_keys=True).encode() + as_of.isoformat().encode())
    for c in centroids:
        h.update(np.ascontiguousarray(c, dtype=np.float32).tobytes())
    return f"{as_of.isoformat()}.{h.hexdigest()[:12]}"


def generation_seed(generation: str) -> int:
    """The token-feature hash seed of a generation (stable, from its id)."""
    return int(hashlib.sha256(generation.encode()).hexdigest()[:15], 16)


class SidParams(JobParams):
    embeddings: str = Field("aligned_embeddings", pattern=TABLE_NAME, description="Embedding table (its ds = "
                            "as-of partition).")
    embedding_filter: str | None = Restricted(
        "filter", None, description="Rows selecting one embedding per item: clauses column = value, column != value, "
        "column in (a, b), column not in (a, b), joined by and — e.g. \"method = 'deepwalk'\" for graph_embeddings "
        "(checked against the table's schema; never evaluated as SQL).")
    vector_column: str = Field("vector", description="The float-array column of the embedding table.")
    normalize: bool = Field(True, description="L2-normalize vectors before quantizing.")
    new_generation: bool = Field(False, description="Refit the codebooks into a new generation (and write "
                                 "sid_remap); the first run always does.")
    codebook_sizes: list[int] = Field([256, 256, 256], description="Codes per level (e.g. 1024,4096,32768).")
    balance: float | None = Field(1.0, ge=0, description="Levels 1..L−1: a code holds at most (1 + balance)·N/K "
                                  "items; none: plain k-means.")
    prefix_balance: float | None = Field(0.0, ge=0, description="Last level: at most (1 + prefix_balance)·n/K "
                                         "items per code among the n items of a prefix; none: plain nearest code.")
    kmeans_iterations: int = Field(20, ge=1, description="faiss k-means iterations per level.")
    balanced_iterations: int = Field(10, ge=0, description="Capacity-constrained Lloyd iterations per level.")
    candidates: int = Field(32, ge=2, description="Nearest codes ranked per item by the balanced assignment.")
    sample_size: int = Field(65536, ge=2, description="Items the codebooks are fitted on (seeded bottom-k sample).")
    encode_shard_rows: int = Field(131072, ge=1, description="Items per Ray task of the catalog's nearest-code "
                                   "search (the codebooks are broadcast; the result does not depend on it).")
    drop_levels: list[int] = Field([], description="Hourglass: levels (1-based, not the last) left out of the SIDs.")
    remove_top_tokens: int = Field(0, ge=0, description="Hourglass: the most frequent tokens of --top-token-level "
                                   "removed from the SIDs of their items (variable-length SIDs).")
    top_token_level: int = Field(2, ge=1, description="The level whose top tokens --remove-top-tokens removes.")
    collision: Literal["suffix", "reassign"] = Field("suffix", description="suffix: an extra last token "
                                                     "0..n−1; reassign: at most --max-per-sid items per SID, "
                                                     "overflow moves to a free last-level code.")
    max_per_sid: int = Field(1, ge=1, description="reassign: items per SID before moving (> 1 adds a suffix).")
    reassign_candidates: int = Field(16, ge=1, description="reassign: nearest last-level codes tried before a "
                                     "seeded random free one.")
    feature_vocab: int = Field(1 << 20, ge=2, description="Hash space of the SID token features.")
    eval_algo: str = Field("swing", description="item_similarity algorithm of the prefix-recall evaluation.")
    eval_k: int = Field(10, ge=1, description="Neighbours per item in the prefix-recall evaluation.")
    gate_max_collision_rate: float = Field(0.5, ge=0, le=1, description="Largest collision rate before handling.")
    gate_min_utilization: float = Field(0.1, ge=0, le=1, description="Smallest share of used codes on every kept "
                                        "level.")
    gate_max_relative_recon_error: float = Field(0.9, gt=0, description="Largest mean ‖e − ê‖² / ‖e‖².")
    gate_min_recall_lift: float = Field(1.0, ge=0, description="Level-1 prefix recall must be at least this times "
                                        "its random baseline (when item_similarity has the date).")

    def rq_spec(self) -> RQSpec:
        return RQSpec(codebook_sizes=tuple(self.codebook_sizes), balance=self.balance,
                      prefix_balance=self.prefix_balance, kmeans_iterations=self.kmeans_iterations,
                      balanced_iterations=self.balanced_iterations, candidates=self.candidates, seed=self.seed)

    def generation_spec(self) -> dict:
        """What a generation fixes for all its daily runs."""
        return {"rq": self.rq_spec().to_dict(), "drop_levels": sorted(self.drop_levels),
                "remove_top_tokens": self.remove_top_tokens, "top_token_level": self.top_token_level,
                "collision": self.collision, "max_per_sid": self.max_per_sid,
                "reassign_candidates": self.reassign_candidates, "normalize": self.normalize,
                "embeddings": self.embeddings, "embedding_filter": self.embedding_filter,
                "vector_column": self.vector_column}


def _fit_task(sample: np.ndarray, spec_dict: dict, cpus: int):
    """Ray task: the codebooks, with the task's CPUs as faiss / numba threads."""
    import time

    import faiss
    import numba

    from recfactory.tokenizers.rq import RQSpec, fit

    faiss.omp_set_num_threads(cpus)
    numba.set_num_threads(min(cpus, numba.config.NUMBA_NUM_THREADS))
    t0 = time.time()
    return fit(sample, RQSpec(**spec_dict)).centroids, time.time() - t0


def _search_task(r: np.ndarray, c: np.ndarray, m: int):
    import faiss

    from recfactory.tokenizers.rq import ranked_candidates

    faiss.omp_set_num_threads(1)
    d, ids = ranked_candidates(r, c, m)
    return d, ids.astype(np.int32)


class ShardedSearch:
    """The nearest-code search of the catalog assignment as Ray tasks over fixed-size row shards,
    the codebook broadcast once per level through the object store. Shards are cut by row count
    (rows are in item-id order), so neither the input's partitioning nor the cluster's size
    changes a row's candidates — and ``ranked_candidates`` re-scores them in float64 per row."""

    def __init__(self, shard_rows: int):
        self.shard_rows = shard_rows
        self.tasks = 0

    def __call__(self, r: np.ndarray, c: np.ndarray, m: int):
        from recfactory.tokenizers.rq import ranked_candidates

        if len(r) <= self.shard_rows:
            return ranked_candidates(r, c, m)
        import ray

        task = ray.remote(num_cpus=1)(_search_task)
        c_ref = ray.put(np.ascontiguousarray(c))
        refs = [task.remote(r[lo:lo + self.shard_rows], c_ref, m) for lo in range(0, len(r), self.shard_rows)]
        self.tasks += len(refs)
        parts = ray.get(refs)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int64)


class BuildSidsJob(Job):
    name = "build_sids"
    Params = SidParams
    description = "Balanced RQ-KMeans semantic IDs with collision handling, metrics, gates and stable generations."
    outputs = ("semantic_ids", "sid_codebooks", "sid_lookup", "sid_features", "sid_metrics", "sid_remap",
               "sid_quarantine")

    @classmethod
    def input_tables(cls, params) -> tuple[str, ...]:
        return (params.embeddings, "item_similarity")

    def run(self, ctx: RunContext) -> None:
        p: SidParams = ctx.params
        spark = ctx.spark
        ids, X, quarantine = self._vectors(ctx, p)
        prior, gen_prev, books_prev, spec_prev, removed_prev = self._prior(ctx, p.new_generation)
        fresh = prior is None or p.new_generation
        gspec = p.generation_spec() if fresh else spec_prev
        generation = gen_prev        # a new generation's id is its content's, known after the fit
        if not fresh and json.dumps(p.generation_spec(), sort_keys=True) != json.dumps(spec_prev, sort_keys=True):
            ctx.notes["spec"] = ("the run's codebook/SID parameters differ from generation "
                                 f"{generation}'s; its own were used (pass --new-generation to apply them)")
        spec = RQSpec(**gspec["rq"])
        n = len(ids)
        if fresh and n < max(spec.codebook_sizes):
            raise ValueError(f"{n} items with a vector cannot fit codebooks of sizes {list(spec.codebook_sizes)}: "
                             "lower --codebook-sizes")

        # who is new, who keeps a published SID
        index = pd.Series(np.arange(n), index=ids)
        if fresh:
            kept = pd.DataFrame(columns=["item_id", "rq_codes", "codes", "suffix"])
        else:
            kept = prior
        kept_ids = set(kept["item_id"])
        new_rows = np.array([i for i, item in enumerate(ids) if item not in kept_ids], dtype=np.int64)
        prior_codes = (np.stack(kept["rq_codes"].to_numpy()).astype(np.int64) if len(kept)
                       else np.zeros((0, spec.levels), dtype=np.int64))
        ctx.row_counts.update({"items": n, "new_items": len(new_rows), "kept_items": len(kept),
                               "kept_in_catalog": int(kept["item_id"].isin(index.index).sum()) if len(kept) else 0})

        # fit (fresh) and encode the new items on Ray
        sample = None
        if fresh:
            sample = X[self._sample_rows(ids, p.sample_size, p.seed)]
            ctx.row_counts["fit_sample"] = len(sample)
        import time

        from recfactory.jobs.runtime.ray_runtime import init_ray, node_cpus
        from recfactory.tokenizers.rq import encode

        ray = init_ray()
        fit_s = 0.0
        if fresh:
            cpus = node_cpus()[0]
            cents, fit_s = ray.get(ray.remote(num_cpus=cpus)(_fit_task).remote(sample, spec.to_dict(), cpus))
            books = Codebooks(cents)
            generation = generation_id(ctx.as_of, gspec, books.centroids)
        else:
            books = Codebooks(books_prev)
        t0 = time.time()
        search = ShardedSearch(p.encode_shard_rows)
        ctx.notes["generation"] = f"{generation} ({'new' if fresh else 'continued'})"
        enc = encode(X[new_rows], books, spec, prior=prior_codes, search=search)
        ctx.metrics.update({"fit_seconds": round(fit_s, 3), "encode_seconds": round(time.time() - t0, 3),
                            "search_tasks": search.tasks})

        # hourglass removal (fixed per generation: computed on the fit, read back afterwards)
        L = spec.levels
        if fresh:
            removed = S.hourglass_removal(enc.codes, spec.codebook_sizes, [lv - 1 for lv in gspec["drop_levels"]],
                                          gspec["remove_top_tokens"], gspec["top_token_level"] - 1)
        else:
            removed = removed_prev
        all_codes = np.vstack([prior_codes, enc.codes])
        tokens = S.omit_tokens(all_codes, removed)
        fixed = np.zeros(len(all_codes), dtype=bool)
        fixed[:len(kept)] = True
        fixed_suffix = np.concatenate([kept["suffix"].to_numpy(dtype=np.int64), np.zeros(len(new_rows), np.int64)])
        item_of = np.concatenate([kept["item_id"].to_numpy(dtype=object), ids[new_rows]])
        order = np.concatenate([np.arange(len(kept)), len(kept) + np.arange(len(new_rows))])  # ids are sorted
        cand = np.vstack([np.zeros((len(kept), enc.last_candidates.shape[1]), np.int64), enc.last_candidates])
        res = S.resolve(tokens, fixed, fixed_suffix, gspec["collision"], order=order,
                        last_candidates=cand[:, :gspec["reassign_candidates"]], sizes=spec.codebook_sizes,
                        max_per_sid=gspec["max_per_sid"], seed=p.seed)
        rq_codes = np.where(res.tokens >= 0, res.tokens, all_codes)   # reassign moved some tokens
        with_suffix = gspec["collision"] == "suffix" or gspec["max_per_sid"] > 1
        sid = np.array(S.sid_strings(res.tokens, res.suffix, with_suffix), dtype=object)
        if len(set(sid)) != len(sid):
            raise AssertionError("semantic IDs are not unique after collision handling")
        in_catalog = pd.Series(item_of).isin(index.index).to_numpy()

        # metrics and gates (in-catalog items, their current vectors)
        rows_x = index.reindex(item_of[in_catalog]).to_numpy()
        metrics = self._metrics(ctx, p, generation, X[rows_x], rq_codes[in_catalog], tokens[in_catalog],
                                res.tokens[in_catalog], res.suffix[in_catalog], ~fixed[in_catalog],
                                item_of[in_catalog], books, removed, res, sum(enc.second_pass),
                                int((~in_catalog).sum()))
        self._gates(p, metrics, removed)

        # publish: codebooks first (a new generation), then the state everything else derives from
        as_of = ctx.as_of
        if fresh:
            fit_counts = [np.bincount(enc.codes[:, lv], minlength=k) for lv, k in enumerate(spec.codebook_sizes)]
            cb = [(generation, lv + 1, code, books.centroids[lv][code].tolist(), bool(removed[lv][code]),
                   int(fit_counts[lv][code]), json.dumps(gspec, sort_keys=True))
                  for lv in range(L) for code in range(spec.codebook_sizes[lv])]
            # replaces this generation's rows only: another generation fitted for the date (a rerun on
            # changed inputs) keeps its centroids, so no state that names it is ever orphaned
            ctx.write(spark.createDataFrame(cb, CODEBOOK_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_codebooks",
                      where={"generation": generation})
        assigned = np.concatenate([kept["assigned_ds"].to_numpy(dtype=object) if len(kept) else np.zeros(0, object),
                                   np.array([as_of] * len(new_rows), dtype=object)])
        state = pd.DataFrame({
            "item_id": item_of, "codes": [[int(c) for c in r if c >= 0] for r in res.tokens],
            "suffix": res.suffix.astype(int), "sid": sid, "generation": generation,
            "rq_codes": [r.tolist() for r in rq_codes], "in_catalog": in_catalog, "assigned_ds": assigned,
        }).sort_values("item_id", kind="stable")
        ref = ctx.write(spark.createDataFrame(state, SID_SCHEMA).withColumn("ds", F.lit(as_of)), "semantic_ids")
        ctx.row_counts["semantic_ids"] = ref.rows
        lookup = state[["sid", "item_id", "generation", "in_catalog"]]
        ctx.write(spark.createDataFrame(lookup, LOOKUP_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_lookup")
        pre, bi = S.token_features(res.tokens, p.feature_vocab, seed=generation_seed(generation))
        feats = pd.DataFrame({"item_id": item_of, "generation": generation, "sid": sid,
                              "prefix_ngram_ids": [r[r >= 0].tolist() for r in pre],
                              "bigram_ids": [r[r >= 0].tolist() for r in bi], "vocab_size": p.feature_vocab})
        ctx.write(spark.createDataFrame(feats[in_catalog], FEATURE_SCHEMA).withColumn("ds", F.lit(as_of)),
                  "sid_features")
        if fresh and prior is not None:
            new_sid = pd.Series(sid, index=item_of)
            remap = pd.DataFrame({"item_id": prior["item_id"], "old_generation": gen_prev, "old_sid": prior["sid"],
                                  "new_generation": generation,
                                  "new_sid": new_sid.reindex(prior["item_id"]).to_numpy()})
            remap["new_sid"] = remap["new_sid"].astype(object).where(remap["new_sid"].notna(), None)
            ref = ctx.write(spark.createDataFrame(remap, REMAP_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_remap")
            ctx.row_counts["sid_remap"] = ref.rows
        ctx.write(spark.createDataFrame(quarantine, QUARANTINE_SCHEMA).withColumn("ds", F.lit(as_of)),
                  "sid_quarantine")
        ctx.write(spark.createDataFrame(metrics, METRICS_SCHEMA).withColumn("ds", F.lit(as_of)), "sid_metrics")

    # ---- inputs -----------------------------------------------------------------------------
    @staticmethod
    def _vectors(ctx: RunContext, p: SidParams):
        """(sorted item ids, vectors n × d float32, quarantine rows) of the embedding partition."""
        from recfactory.jobs.runtime.inputs import date_partition

        df = date_partition(ctx, p.embeddings, WRITERS.get(p.embeddings, f"the job that writes {p.embeddings}"))
        if p.vector_column not in df.columns or "item_id" not in df.columns:
            raise ValueError(f"{p.embeddings} needs item_id and {p.vector_column} columns; it has {df.columns}")
        if p.embedding_filter:
            df = df.where(filter_column(parse_filter(p.embedding_filter), df.schema))
        pdf = df.select(F.col("item_id").cast("string").alias("item_id"),
                        F.col(p.vector_column).alias("v")).toPandas()
        ctx.row_counts["embedding_rows"] = len(pdf)
        if not len(pdf):
            raise ValueError(f"{p.embeddings} has no rows for {ctx.as_of}"
                             + (f" matching {p.embedding_filter!r}" if p.embedding_filter else ""))
        reasons = pd.Series(None, index=pdf.index, dtype=object)
        reasons[pdf["item_id"].isna()] = "null item_id"
        dup = pdf["item_id"].duplicated(keep=False) & pdf["item_id"].notna()
        reasons[dup & reasons.isna()] = "item_id appears more than once (narrow it with --embedding-filter)"
        lens = pdf["v"].map(lambda v: -1 if v is None else len(v))
        reasons[(lens < 0) & reasons.isna()] = "null vector"
        dim = int(lens[reasons.isna()].mode().iloc[0]) if reasons.isna().any() else 0
        reasons[(lens != dim) & reasons.isna()] = f"vector length differs from the table's {dim}"
        ok = reasons.isna()
        X = np.zeros((int(ok.sum()), dim), dtype=np.float32)
        if ok.any():
            X = np.stack(pdf.loc[ok, "v"].to_numpy()).astype(np.float32)
        finite = np.isfinite(X).all(1)
        norms = np.linalg.norm(X, axis=1)
        idx_ok = np.flatnonzero(ok.to_numpy())
        reasons.iloc[idx_ok[~finite]] = "non-finite vector values"
        reasons.iloc[idx_ok[finite & (norms == 0)]] = "zero vector"
        keep = finite & (norms > 0)
        X, ids = X[keep], pdf.loc[ok, "item_id"].to_numpy(dtype=object)[keep]
        q = pd.DataFrame({"item_id": pdf["item_id"][reasons.notna()], "reason": reasons[reasons.notna()]})
        ctx.row_counts["quarantined"] = len(q)
        if len(ids) + len(q) != len(pdf):
            raise AssertionError(f"embedding rows do not reconcile: {len(ids)} + {len(q)} != {len(pdf)}")
        order = np.argsort(ids, kind="stable")
        ids, X = ids[order], X[order]
        if p.normalize:
            X /= np.linalg.norm(X, axis=1, keepdims=True)
        return ids, np.ascontiguousarray(X), q

    def _prior(self, ctx: RunContext, new_generation: bool):
        """(state, generation, codebooks, generation spec, removed-token masks) of the state published
        for the day before the as-of, or Nones when no earlier date has state (a chain of its own).

        A date continues from the previous date only: never from an older one across a gap (that
        fails, naming the missing date, unless --new-generation starts a new chain), never from a
        later one. So rerunning a date after later dates ran gives its first run's rows."""
        if not ctx.has("semantic_ids"):
            return None, None, None, None, None
        prev = ctx.as_of - dt.timedelta(days=1)
        sids = ctx.read("semantic_ids")
        state = sids.where(F.col("ds") == F.lit(prev)).drop("ds").toPandas()
        if not len(state):
            older = sids.where(F.col("ds") < F.lit(prev)).agg(F.max("ds")).first()[0]
            if older is None:
                return None, None, None, None, None
            if new_generation:
                ctx.notes["prior"] = f"none: no state for {prev} (latest {older}); a new chain"
                return None, None, None, None, None
            # a rerun of a date that started its chain (its generation was fitted on it, with no state
            # before it at the time; an earlier date backfilled since has a chain of its own)
            own = sids.where(F.col("ds") == F.lit(ctx.as_of)).select("generation").distinct().collect()
            if own and all(str(r["generation"]).startswith(f"{ctx.as_of.isoformat()}.") for r in own):
                ctx.notes["prior"] = f"none: {ctx.as_of} started its chain (rerun)"
                return None, None, None, None, None
            raise MissingPriorDateError(
                f"build_sids for {ctx.as_of} continues the semantic IDs of {prev}, which has none, while "
                f"{older} has: run build_sids for {prev} first (dates after {older} in order), or pass "
                "--new-generation to start a new chain")
        state = state.sort_values("item_id", kind="stable")
        gens = sorted(set(state["generation"]))
        if len(gens) != 1:
            raise ValueError(f"semantic_ids of {prev} mix generations {gens}")
        gen = gens[0]
        cb = ctx.read("sid_codebooks").where((F.col("generation") == F.lit(gen)) & (F.col("ds") <= F.lit(ctx.as_of)))
        cbp = cb.toPandas().sort_values(["level", "code"])
        if not len(cbp):
            raise ValueError(f"sid_codebooks has no rows for generation {gen} (semantic_ids of {prev} use it)")
        if cbp.duplicated(["level", "code"]).any():
            raise AssertionError(f"generation {gen} has more than one centroid for a (level, code)")
        spec = json.loads(cbp["spec"].iloc[0])
        cents, removed = [], []
        for lv in sorted(cbp["level"].unique()):
            part = cbp[cbp["level"] == lv]
            cents.append(np.stack(part["centroid"].to_numpy()).astype(np.float32))
            removed.append(part["removed"].to_numpy(dtype=bool))
        ctx.notes["prior"] = f"semantic_ids ds={prev}, generation {gen}"
        return state.reset_index(drop=True), gen, cents, spec, removed

    @staticmethod
    def _sample_rows(ids: np.ndarray, size: int, seed: int) -> np.ndarray:
        """The `size` items with the smallest seeded hash of their id (a reservoir sample that does not
        depend on row order or partitioning), in id order."""
        if len(ids) <= size:
            return np.arange(len(ids))
        return np.sort(seeded_sample(ids, seed, "sid", size))

    # ---- metrics ----------------------------------------------------------------------------
    def _metrics(self, ctx: RunContext, p: SidParams, generation: str, X: np.ndarray, codes: np.ndarray,
                 before: np.ndarray, after: np.ndarray, suffix: np.ndarray, is_new: np.ndarray, items: np.ndarray,
                 books: Codebooks, removed: list[np.ndarray], res, second_pass: int, gone: int) -> pd.DataFrame:
        """One row per level plus a totals row (level 0), over the in-catalog items: X their current
        vectors, codes their RQ codes, before / after their SID tokens before / after handling."""
        L = books.levels
        neighbors = self._neighbors(ctx, p, items)
        sq = np.maximum((X * X).sum(1), 1e-12)
        cum = np.zeros_like(X)
        rows = []
        for lv in range(L):
            cum += books.centroids[lv][codes[:, lv]]
            err = X - cum
            st = S.token_stats(after[:, lv], books.sizes[lv])
            row = {"level": lv + 1, "codebook_size": float(books.sizes[lv]), "items": st["tokens"],
                   **{k: st[k] for k in ("utilization", "entropy", "perplexity", "max_entropy", "gini",
                                         "top_token_share", "max_code_size", "mean_code_size")},
                   "removed_tokens": float(removed[lv].sum()),
                   "recon_error": float(np.linalg.norm(err, axis=1).mean()),
                   "relative_recon_error": float(((err * err).sum(1) / sq).mean())}
            if neighbors is not None:
                row["prefix_recall"], row["prefix_recall_random"], _ = S.prefix_recall(codes, neighbors, lv + 1)
            rows.append(row)
        err = np.linalg.norm(X - cum, axis=1)
        _, n_before = S.row_ids(before)
        _, n_after = S.row_ids(after)
        total = {"level": 0, "items": float(len(codes)),
                 "collision_rate_before": S.collision_rate(before),
                 "collision_rate_after": S.collision_rate(after, suffix),
                 "max_items_per_sid_before": float(n_before.max(initial=0)), "sid_gini_before": S.gini(n_before),
                 "sid_gini_after": S.gini(n_after), "moved": float(res.moved),
                 "fell_back_fraction": res.fell_back / res.moved if res.moved else 0.0,
                 "candidates_full_items": float(second_pass), "new_items": float(is_new.sum()),
                 "kept_items": float((~is_new).sum()), "removed_items": float(gone),
                 "recon_error": rows[-1]["recon_error"], "relative_recon_error": rows[-1]["relative_recon_error"],
                 "new_recon_error": float(err[is_new].mean()) if is_new.any() else np.nan,
                 "kept_recon_error": float(err[~is_new].mean()) if (~is_new).any() else np.nan,
                 "fit_seconds": ctx.metrics["fit_seconds"], "encode_seconds": ctx.metrics["encode_seconds"]}
        out = pd.DataFrame(rows + [total])
        for c in LEVEL_METRICS + TOTAL_METRICS:
            if c not in out:
                out[c] = np.nan
        out["generation"] = generation
        for r in rows + [total]:
            for k, v in r.items():
                if k != "level" and v is not None and np.isfinite(v):
                    ctx.metrics[f"{k}.level{r['level']}" if r["level"] else k] = round(float(v), 6)
        out = out[["generation", "level", *LEVEL_METRICS, *TOTAL_METRICS]]
        return out.astype({c: float for c in LEVEL_METRICS + TOTAL_METRICS}).astype({"level": int, "generation": str})

    @staticmethod
    def _neighbors(ctx: RunContext, p: SidParams, items: np.ndarray) -> list[np.ndarray] | None:
        """Each item's top eval_k behaviour neighbours (row indices into `items`), or None when
        item_similarity has no partition for the as-of."""
        if not ctx.has("item_similarity"):
            ctx.notes["prefix_recall"] = "skipped: no item_similarity table"
            return None
        sims = ctx.read("item_similarity").where((F.col("ds") == F.lit(ctx.as_of)) & (F.col("algo") == p.eval_algo))
        pairs = (sims.select("item_id", F.posexplode("neighbors").alias("rank", "nb"))
                 .where(F.col("rank") < p.eval_k)
                 .select(F.col("item_id").cast("string").alias("a"), F.col("nb.item_id").cast("string").alias("b"))
                 .toPandas())
        if not len(pairs):
            ctx.notes["prefix_recall"] = f"skipped: item_similarity has no {p.eval_algo} rows for {ctx.as_of}"
            return None
        index = pd.Series(np.arange(len(items)), index=items)
        pairs = pairs[pairs["a"].isin(index.index) & pairs["b"].isin(index.index)]
        ctx.row_counts["eval_pairs"] = len(pairs)
        out = [np.zeros(0, dtype=np.int64)] * len(items)
        for a, g in pairs.groupby("a", sort=False)["b"]:
            out[index[a]] = index[g.to_numpy()].to_numpy()
        return out

    @staticmethod
    def _gates(p: SidParams, m: pd.DataFrame, removed: list[np.ndarray]) -> None:
        total = m[m["level"] == 0].iloc[0]
        levels = m[m["level"] > 0]
        failed = []
        if total["collision_rate_before"] > p.gate_max_collision_rate:
            failed.append(f"collision rate before handling {total['collision_rate_before']:.4f} > "
                          f"{p.gate_max_collision_rate}")
        for _, r in levels.iterrows():
            if removed[int(r["level"]) - 1].all():
                continue      # a dropped level has no tokens
            if r["utilization"] < p.gate_min_utilization:
                failed.append(f"level {int(r['level'])} uses {r['utilization']:.3f} of its codes < "
                              f"{p.gate_min_utilization}")
        if total["relative_recon_error"] > p.gate_max_relative_recon_error:
            failed.append(f"relative reconstruction error {total['relative_recon_error']:.4f} > "
                          f"{p.gate_max_relative_recon_error}")
        first = levels.iloc[0]
        if np.isfinite(first["prefix_recall"]) and first["prefix_recall"] < p.gate_min_recall_lift * \
                first["prefix_recall_random"]:
            failed.append(f"level-1 prefix recall {first['prefix_recall']:.4f} < {p.gate_min_recall_lift} × its "
                          f"random baseline {first['prefix_recall_random']:.4f}")
        if failed:
            raise QualityGateError("semantic IDs not published: " + "; ".join(failed))


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_sids")
