"""GBDT leaf encodings — a gradient-boosted forest as a learned tokenizer of dense features
(He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", 2014). Arrays in,
arrays out; no Spark, no I/O.

Each tree maps a row to one of its leaves; the leaf indices of all trees, shifted by per-tree
offsets into one global vocabulary (tree t's leaf j → offset[t] + j), are categorical features a
downstream model embeds or one-hot encodes. The model trains on LightGBM (binary objective,
deterministic mode) and is stored as LightGBM's own text format — no pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class GBDTSpec:
    """Defaults: the Facebook paper boosts ~500 trees of ≤ 12 leaves; LightGBM's leaf-wise growth
    with 31 leaves and a 0.05 learning rate gets there with fewer, deeper trees."""

    num_trees: int = 200
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    threads: int = 0                   # 0: LightGBM's default (all cores)
    seed: int = 0

    def __post_init__(self):
        if self.num_trees < 1 or self.num_leaves < 2 or self.learning_rate <= 0 or self.min_data_in_leaf < 1:
            raise ValueError("num_trees >= 1, num_leaves >= 2, learning_rate > 0 and min_data_in_leaf >= 1 are required")
        if not (0 < self.feature_fraction <= 1 and 0 < self.bagging_fraction <= 1):
            raise ValueError("feature_fraction and bagging_fraction must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    def lgb_params(self) -> dict:
        return {"objective": "binary", "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
                "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
                "bagging_fraction": self.bagging_fraction, "bagging_freq": self.bagging_freq,
                "lambda_l2": self.lambda_l2, "num_threads": self.threads, "seed": self.seed,
                "deterministic": True, "force_row_wise": True, "verbose": -1}


def train(X: np.ndarray, y: np.ndarray, spec: GBDTSpec, feature_names: list[str], weight: np.ndarray | None = None):
    """A LightGBM binary booster with spec.num_trees trees."""
    import lightgbm as lgb

    if X.shape[1] != len(feature_names):
        raise ValueError(f"{X.shape[1]} feature columns but {len(feature_names)} names")
    if len(np.unique(y)) < 2:
        raise ValueError("the training rows have a single label: nothing to learn")
    data = lgb.Dataset(X, label=y, weight=weight, feature_name=list(feature_names), free_raw_data=False)
    return lgb.train(spec.lgb_params(), data, num_boost_round=spec.num_trees)


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
            if "split_index" not in node:                 # a leaf (a single-leaf tree has no leaf_index)
                leaves.append((int(node.get("leaf_index", 0)), float(node["leaf_value"]), int(node.get("leaf_count", 0))))
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
    """N × trees global leaf ids."""
    leaves = booster.predict(X, pred_leaf=True).astype(np.int64).reshape(len(X), -1)
    return leaves + offsets[None, : leaves.shape[1]]


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
    return sp.csr_matrix((np.ones(n * t, dtype=np.float32), leaves.reshape(-1), np.arange(0, n * t + 1, t)),
                         shape=(n, vocab_size))


def train_distributed(X: np.ndarray, y: np.ndarray, spec: GBDTSpec, feature_names: list[str], workers: int,
                      storage_path: str, run_name: str):
    """Data-parallel LightGBM on Ray Train (``LightGBMTrainer``, one CPU per worker, LightGBM's
    data-parallel tree learner over the workers' row shards). Returns the booster of the final
    checkpoint."""
    import lightgbm as lgb
    import ray.data
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer, RayTrainReportCallback

    if len(np.unique(y)) < 2:
        raise ValueError("the training rows have a single label: nothing to learn")
    frame = pd.DataFrame(X, columns=list(feature_names))
    frame["__label"] = y
    names = list(feature_names)

    def loop(config: dict) -> None:
        import ray.train.lightgbm as rtl

        shard = ray.train.get_dataset_shard("train").materialize().to_pandas()
        data = lgb.Dataset(shard[names].to_numpy(), label=shard["__label"].to_numpy(), feature_name=names)
        params = {**config["params"], "tree_learner": "data", "num_threads": 1, **rtl.get_network_params()}
        lgb.train(params, data, num_boost_round=config["rounds"], callbacks=[RayTrainReportCallback()])

    trainer = LightGBMTrainer(
        loop, train_loop_config={"params": spec.lgb_params(), "rounds": spec.num_trees},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=storage_path, name=run_name),
        datasets={"train": ray.data.from_pandas(frame)})
    result = trainer.fit()
    return RayTrainReportCallback.get_model(result.checkpoint)
