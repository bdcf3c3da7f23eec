"""GBDT leaf encodings — a gradient-boosted forest as a learned tokenizer of dense features
(He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", 2014). Arrays in,
arrays out; no Spark, no I/O.

Each tree maps a row to one of its leaves; the leaf indices of all trees, shifted by per-tree
offsets into one global vocabulary (tree t's leaf j → offset[t] + j), are categorical features a
downstream model embeds or one-hot encodes. The model trains on LightGBM (binary objective,
deterministic mode) and is stored as LightGBM's own text format — no pickle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

from recfactory.features.draws import seeded_share
from recfactory.tokenizers.gbdt_spec import GBDTSpec


def train(
    X: np.ndarray,
    y: np.ndarray,
    spec: GBDTSpec,
    feature_names: list[str],
    weight: np.ndarray | None = None,
    threads: int = 0,
):
    """A LightGBM binary booster with spec.num_trees trees (on ``threads`` threads; 0: all cores)."""
    import lightgbm as lgb

    if X.shape[1] != len(feature_names):
        raise ValueError(f"{X.shape[1]} feature columns but {len(feature_names)} names")
    if len(np.unique(y)) < 2:
        raise ValueError("the training rows have a single label: nothing to learn")
    data = lgb.Dataset(X, label=y, weight=weight, feature_name=list(feature_names), free_raw_data=False)
    return lgb.train(spec.lgb_params(threads), data, num_boost_round=spec.num_trees)


def leaf_vocab(booster) -> pd.DataFrame:
    """One row per (tree, leaf): tree, leaf (LightGBM's leaf index, what pred_leaf returns),
    global_id (dense over the model: offset of the tree + leaf), leaf_value, count (training rows
    that reached it)."""
    rows = []
    offset = 0
    for t, tree in enumerate(booster.dump_model()["tree_info"]):
        leaves = []
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" not in node:  # a leaf (a single-leaf tree has no leaf_index)
                leaves.append(
                    (int(node.get("leaf_index", 0)), float(node["leaf_value"]), int(node.get("leaf_count", 0)))
                )
            else:
                stack += [node["left_child"], node["right_child"]]
        leaves.sort()
        if [lf[0] for lf in leaves] != list(range(len(leaves))):
            raise AssertionError(f"tree {t}: leaf indices are not 0..{len(leaves) - 1}")
        rows += [(t, j, offset + j, v, c) for j, v, c in leaves]
        offset += len(leaves)
    return pd.DataFrame(rows, columns=["tree", "leaf", "global_id", "leaf_value", "count"])


def tree_offsets(vocab: pd.DataFrame) -> np.ndarray:
    """offset[t] = global id of tree t's leaf 0."""
    return vocab.groupby("tree")["global_id"].min().sort_index().to_numpy(dtype=np.int64)


def encode_leaves(booster, X: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """N × trees global leaf ids (LightGBM's pred_leaf plus the offsets)."""
    leaves = booster.predict(X, pred_leaf=True).astype(np.int64).reshape(len(X), -1)
    return leaves + offsets[None, : leaves.shape[1]]


_ZERO = 1e-35  # LightGBM's kZeroThreshold: |x| <= this is zero (its dense-row reader drops it)


@numba.njit(cache=True, nogil=True)
def _leaf_kernel(X, feat, thr, dtype, left, right, n_leaves, offsets, out):  # pragma: no cover - compiled
    n, trees = X.shape[0], feat.shape[0]
    for s in range(0, n, 256):  # a block of rows stays in cache across the trees
        e = min(n, s + 256)
        for t in range(trees):
            if n_leaves[t] == 1:
                for r in range(s, e):
                    out[r, t] = offsets[t]
                continue
            for r in range(s, e):
                node = 0
                while node >= 0:
                    f = X[r, feat[t, node]]
                    d = dtype[t, node]
                    missing = (d >> 2) & 3  # 0 none, 1 zero, 2 NaN
                    if -_ZERO <= f <= _ZERO:
                        f = 0.0
                    elif np.isnan(f) and missing != 2:
                        f = 0.0
                    if (missing == 1 and f == 0.0) or (missing == 2 and np.isnan(f)):
                        node = left[t, node] if d & 2 else right[t, node]  # default direction
                    else:
                        node = left[t, node] if f <= thr[t, node] else right[t, node]
                out[r, t] = offsets[t] + ~node


class LeafEncoder:
    """Global leaf ids straight from a LightGBM model text: the trees' split arrays
    (``split_feature``, ``threshold``, ``decision_type``, ``left_child``, ``right_child``) walked
    by a compiled kernel that applies LightGBM's own numerical decision (``Tree::NumericalDecision``:
    missing type none / zero / NaN, default direction, ``|x| <= 1e-35`` is zero), a block of rows
    at a time, writing offset[t] + leaf in one pass. Equal to ``Booster.predict(pred_leaf=True)``
    (tested with NaNs and zeros as missing) and ~1.4× faster on one thread; treelite / lleaves
    compile the score, not the leaf indices. Models with categorical splits fall back to LightGBM.
    """

    def __init__(self, model_text: str, offsets: np.ndarray | None = None):
        trees: list[dict[str, str]] = []
        for line in model_text.splitlines():
            if line.startswith("end of trees"):
                break
            if line.startswith("Tree="):
                trees.append({})
            elif trees and "=" in line:
                k, v = line.split("=", 1)
                trees[-1][k] = v
        self.model_text = model_text
        self.num_trees = len(trees)
        n_leaves = np.array([int(t["num_leaves"]) for t in trees], dtype=np.int32)
        width = max(1, int(n_leaves.max(initial=1)) - 1)
        shape = (len(trees), width)
        self._arrays = [
            np.zeros(shape, np.int32),
            np.zeros(shape, np.float64),
            np.zeros(shape, np.int8),
            np.zeros(shape, np.int32),
            np.zeros(shape, np.int32),
        ]
        keys = ("split_feature", "threshold", "decision_type", "left_child", "right_child")
        self.categorical = False
        for i, t in enumerate(trees):
            k = n_leaves[i] - 1
            if k == 0:
                continue
            for arr, key in zip(self._arrays, keys, strict=True):
                arr[i, :k] = np.array(t[key].split(), dtype=np.float64 if key == "threshold" else np.int64)
            self.categorical |= bool((self._arrays[2][i, :k] & 1).any())
        self.n_leaves = n_leaves
        self.num_features = int(self._arrays[0].max(initial=-1)) + 1  # columns the splits read
        self.offsets = (
            np.concatenate([[0], np.cumsum(n_leaves)[:-1]]) if offsets is None else np.asarray(offsets)
        ).astype(np.int64)
        if len(self.offsets) != self.num_trees:
            raise ValueError(f"{len(self.offsets)} offsets for {self.num_trees} trees")
        self._booster = None

    def encode(self, X: np.ndarray) -> np.ndarray:
        """N × trees int32 global leaf ids of the rows of X (float64; NaN = missing)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] < self.num_features:  # the kernel does not bounds-check
            raise ValueError(f"X must be N × {self.num_features} features, got shape {X.shape}")
        if self.categorical:
            import lightgbm as lgb

            if self._booster is None:
                self._booster = lgb.Booster(model_str=self.model_text)
            leaves = self._booster.predict(X, pred_leaf=True, num_threads=1).reshape(len(X), -1)
            return (leaves + self.offsets[None, :]).astype(np.int32)
        out = np.empty((len(X), self.num_trees), dtype=np.int32)
        _leaf_kernel(X, *self._arrays, self.n_leaves, self.offsets, out)
        return out


# ---- evaluation -------------------------------------------------------------------------------


def log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    w = np.ones(len(y)) if w is None else w
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def normalized_entropy(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """NE: log loss divided by the entropy of the (weighted) base rate (He et al. 2014); RIG = 1 − NE."""
    w = np.ones(len(y)) if w is None else w
    base = float((w * y).sum() / w.sum())
    return log_loss(y, p, w) / log_loss(y, np.full(len(y), base), w)


def calibration_ratio(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean prediction over mean label (1: calibrated)."""
    w = np.ones(len(y)) if w is None else w
    return float((w * p).sum() / max((w * y).sum(), 1e-12))


def auc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p, sample_weight=w))


def one_hot(leaves: np.ndarray, vocab_size: int):
    """Sparse N × vocab one-hot rows of global leaf ids (one 1 per tree)."""
    import scipy.sparse as sp

    n, t = leaves.shape
    return sp.csr_matrix(
        (np.ones(n * t, dtype=np.float32), leaves.reshape(-1), np.arange(0, n * t + 1, t)), shape=(n, vocab_size)
    )


def train_distributed(
    X: np.ndarray,
    y: np.ndarray,
    spec: GBDTSpec,
    feature_names: list[str],
    workers: int,
    storage_path: str,
    run_name: str,
):
    """Data-parallel LightGBM on Ray Train (``LightGBMTrainer``, one CPU per worker, LightGBM's
    data-parallel tree learner over the workers' row shards). Returns the booster of the final
    checkpoint."""
    import lightgbm as lgb
    import ray.data
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer, RayTrainReportCallback

    from recfactory.graph.ray_train import fast_reports

    if len(np.unique(y)) < 2:
        raise ValueError("the training rows have a single label: nothing to learn")
    frame = pd.DataFrame(X, columns=list(feature_names))
    frame["__label"] = y
    names = list(feature_names)

    class FinalReport(RayTrainReportCallback):
        """Ray's callback calls ``ray.train.report`` after every boosting round, a synchronous
        round trip (measured: ~2 s a round, 80 s for 30 trees on two workers, 29 s for 5): here
        only the last round reports, with the model's checkpoint."""

        def __call__(self, env) -> None:
            if env.iteration == env.end_iteration - 1:
                super().__call__(env)

    def loop(config: dict) -> None:
        import ray.train.lightgbm as rtl

        shard = ray.train.get_dataset_shard("train").materialize().to_pandas()
        data = lgb.Dataset(shard[names].to_numpy(), label=shard["__label"].to_numpy(), feature_name=names)
        params = {**config["params"], "tree_learner": "data", "num_threads": 1, **rtl.get_network_params()}
        lgb.train(params, data, num_boost_round=config["rounds"], callbacks=[FinalReport()])

    fast_reports()
    trainer = LightGBMTrainer(
        loop,
        train_loop_config={"params": spec.lgb_params(), "rounds": spec.num_trees},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=storage_path, name=run_name),
        datasets={"train": ray.data.from_pandas(frame)},
    )
    result = trainer.fit()
    return RayTrainReportCallback.get_model(result.checkpoint)


# -- the training run's rows and its evaluation (the Facebook comparison) --------------------------

LEAF_LR_C = (1.0, 0.1, 0.03, 0.01, 0.003, 0.001)  # L2 strengths tried for LR on one-hot leaves


@dataclass
class Split:
    """The rows of one training run: `tree` (the earliest share of the train split in time order,
    negatives downsampled: the trees' rows), `down` (the rest of the train split: the downstream LR
    models'), `test`; w_* are the total negative rates of tree and downstream rows."""

    tree: pd.DataFrame
    down: pd.DataFrame
    test: pd.DataFrame
    w_tree: float
    w_down: float
    downsampled: int  # tree negatives left out
    unused: int  # rows of other splits (validation)


def split_rows(pdf: pd.DataFrame, tree_fraction: float, negative_rate: float, seed: int, what: str) -> Split:
    """Tree and downstream rows are disjoint (the downstream models never see a row the trees were
    grown on), cut in time order (ts, then sample_id); tree negatives are kept with a seeded share
    `negative_rate` of their sample ids. `pdf` has sample_id, ts, split, _y, negative_rate."""
    train = pdf[pdf["split"] == "train"].sort_values(["ts", "sample_id"], kind="stable")
    test = pdf[pdf["split"] == "test"]
    if not len(train) or not len(test):
        raise ValueError(f"{what} needs train and test rows (has {pdf['split'].value_counts().to_dict()})")
    cut = int(len(train) * tree_fraction)
    tree, down = train.iloc[:cut], train.iloc[cut:]
    w_samples = train["negative_rate"].unique()
    if len(w_samples) != 1:
        raise ValueError(f"the train split mixes negative rates {sorted(w_samples)}")
    keep = (tree["_y"].to_numpy() == 1) | seeded_share(tree["sample_id"].to_numpy(), seed, "gbdt", negative_rate)
    return Split(
        tree[keep],
        down,
        test,
        float(w_samples[0]) * negative_rate,
        float(w_samples[0]),
        int((~keep).sum()),
        len(pdf) - len(train) - len(test),
    )


def lr_comparison(
    booster, offsets: np.ndarray, vocab_size: int, Xd: np.ndarray, yd: np.ndarray, Xt: np.ndarray, w: float
) -> tuple[dict[str, np.ndarray], float]:
    """The Facebook comparison, trained on the downstream rows: LR on one-hot leaves and LR on the
    raw features (median-imputed, standardized), both recalibrated with w; and the leaves' C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from recfactory.features.samples import recalibrate

    # L2 strength picked on the latest fifth of the downstream rows (they are in time order),
    # then refitted on all of them: thousands of one-hot leaves overfit without it
    Ld = one_hot(encode_leaves(booster, Xd, offsets), vocab_size)
    cut = int(len(yd) * 0.8)
    best = (np.inf, 1.0)
    if len(np.unique(yd[:cut])) == 2 and len(np.unique(yd[cut:])) == 2:
        for C in LEAF_LR_C:
            m = LogisticRegression(C=C, max_iter=1000).fit(Ld[:cut], yd[:cut])
            best = min(best, (normalized_entropy(yd[cut:], m.predict_proba(Ld[cut:])[:, 1]), C))
    lr_leaves = LogisticRegression(C=best[1], max_iter=1000).fit(Ld, yd)
    q_leaves = lr_leaves.predict_proba(one_hot(encode_leaves(booster, Xt, offsets), vocab_size))[:, 1]
    with warnings.catch_warnings():  # an all-missing column has no median: 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.where(np.isfinite(Xd), Xd, np.nan), axis=0)
    med = np.where(np.isfinite(med), med, 0.0)

    def impute(X):
        return np.where(np.isfinite(X), X, med[None, :])

    lr_raw = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    lr_raw.fit(impute(Xd), yd)
    q_raw = lr_raw.predict_proba(impute(Xt))[:, 1]
    return {"lr_leaves": recalibrate(q_leaves, w), "lr_raw": recalibrate(q_raw, w)}, best[1]


def metric_row(version, model, split, col, value, y, q) -> tuple:
    """(version, model, split, slice column, slice value, rows, positives, AUC, NE, RIG, calibration)."""
    both = len(np.unique(y)) == 2
    ne = normalized_entropy(y, q) if both else None
    return (
        version,
        model,
        split,
        col,
        value,
        int(len(y)),
        int(y.sum()),
        auc(y, q) if both else None,
        ne,
        None if ne is None else 1 - ne,
        calibration_ratio(y, q) if y.sum() else None,
    )


def evaluate(
    version: str, scores: dict[str, np.ndarray], test: pd.DataFrame, slices: list[str], max_slice_values: int
) -> list[tuple]:
    """`metric_row`s on the test split: every model overall, then GBDT on the most frequent values
    of each slice column."""
    y = test["_y"].to_numpy()
    rows = [metric_row(version, model, "test", None, None, y, q) for model, q in scores.items()]
    for col in slices:
        for v in test[col].astype(str).value_counts().index[:max_slice_values]:
            m = (test[col].astype(str) == v).to_numpy()
            rows.append(metric_row(version, "gbdt", "test", col, v, y[m], scores["gbdt"][m]))
    return rows


def importance_by_gain(booster, names: list[str]) -> dict[str, float]:
    """Each feature's share of the total gain, largest first."""
    gain = booster.feature_importance("gain")
    return dict(
        sorted(zip(names, (gain / max(gain.sum(), 1e-12)).round(6).tolist(), strict=True), key=lambda kv: -kv[1])
    )


def gate_failures(auc_value: float, ne_value: float, min_auc: float, max_ne: float) -> list[str]:
    failed = []
    if not auc_value >= min_auc:
        failed.append(f"test AUC {auc_value:.4f} < {min_auc}")
    if not ne_value < max_ne:
        failed.append(f"test NE {ne_value:.4f} >= {max_ne}")
    return failed
