"""The GBDT leaf encoder's parameters (``tokenizers.gbdt``): the forest, the split of its rows, the
downstream comparison. Apart from the model code, so that what declares parameters (a job's
Params, the Airflow DAG files, the CLI's help) imports neither numba nor LightGBM."""

from __future__ import annotations

from recfactory.features.spec import Field, Seeded


class GBDTSpec(Seeded):
    """Defaults: the Facebook paper boosts ~500 trees of ≤ 12 leaves; LightGBM's leaf-wise growth
    with 31 leaves and a 0.05 learning rate gets there with fewer, deeper trees."""

    num_trees: int = Field(200, ge=1, description="Boosting rounds (trees).")
    num_leaves: int = Field(31, ge=2, description="Leaves per tree.")
    learning_rate: float = Field(0.05, gt=0, description="Shrinkage.")
    min_data_in_leaf: int = Field(100, ge=1, description="Smallest leaf.")
    feature_fraction: float = Field(0.8, gt=0, le=1, description="Features sampled per tree.")
    bagging_fraction: float = Field(0.8, gt=0, le=1, description="Rows sampled per tree.")
    bagging_freq: int = Field(1, ge=0, description="Rows are resampled every this many trees (0: never).")
    lambda_l2: float = Field(1.0, ge=0, description="L2 regularization of the leaf values.")

    def lgb_params(self, threads: int = 0) -> dict:
        """LightGBM's parameters; ``threads`` 0: LightGBM's default (all cores)."""
        return {
            "objective": "binary",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "num_threads": threads,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }
