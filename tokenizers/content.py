"""Content embeddings on Spark: item catalog → (item, encoder) vectors, distributed with mapInPandas.

Two passes, both ``mapInPandas`` over the catalog:

1. ``encoder_inputs``: each item's input for an encoder — the templated text (``item_text``) or its
   ``image_path`` — and a hash of it: of the text, or of the image file's bytes (read through the
   ``ImagePolicy``), so an image rewritten in place is encoded again. Items without an input (no
   image) are returned with a null input, so the caller can count them.
2. ``encode``: the inputs → vectors, each Python worker loading the model once (``cached_encoder``)
   and encoding ``batch_size`` items at a time. An input the encoder refuses (an unreadable image)
   does not fail its batch: the batch is retried item by item and the bad item comes back with a
   null vector and the error as its reason (the job quarantines it).

The job re-encodes only what changed: vectors whose (item, encoder, model version, input hash) is
unchanged since the previous snapshot are reused (``reuse``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.tokenizers.encoders import (
    TEXT_FIELDS,
    ImagePolicy,
    ImageRefused,
    cached_encoder,
    encoder_class,
    item_text,
    takes_image_policy,
)

INPUT_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("input", T.StringType()),
        T.StructField("input_hash", T.StringType()),
    ]
)
VECTOR_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("input_hash", T.StringType()),
        T.StructField("vector", T.ArrayType(T.FloatType())),
        T.StructField("error", T.StringType()),
    ]
)


def input_hash(values: pd.Series) -> pd.Series:
    return values.map(lambda v: hashlib.sha1(v.encode("utf-8")).hexdigest()[:16] if isinstance(v, str) else None)


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def image_hash(path: str, images: ImagePolicy) -> str:
    """The hash of the image's bytes; for an image the policy refuses, a hash of the path and the
    refusal (the item is encoded, i.e. refused and quarantined, again — and once the file is fixed,
    its new hash no longer matches)."""
    try:
        return _sha(images.read(path))
    except ImageRefused as e:
        return "!" + _sha(f"{path}\0{e}".encode())[1:]


def encoder_inputs(
    items: DataFrame, encoder: str, text_fields: tuple[str, ...] = TEXT_FIELDS, images: ImagePolicy | None = None
) -> DataFrame:
    """item_id, input (text or image path; null when the item has none), input_hash."""
    kind = encoder_class(encoder).input
    images = images or ImagePolicy()
    cols = [c for c in ("item_id", *text_fields, "image_path") if c in items.columns]
    fields = tuple(f for f in text_fields if f in items.columns)

    def inputs(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if kind == "text":
                value = item_text(pdf, fields)
            elif "image_path" in pdf.columns:
                value = pdf["image_path"].astype(object)
            else:
                value = pd.Series([None] * len(pdf), index=pdf.index, dtype=object)
            value = value.where(value.map(lambda v: isinstance(v, str) and v != ""), None)
            hashes = (
                value.map(lambda v: image_hash(v, images) if isinstance(v, str) else None)
                if kind == "image_path"
                else input_hash(value)
            )
            yield pd.DataFrame({"item_id": pdf["item_id"].astype(str), "input": value, "input_hash": hashes})

    return items.select(*cols).mapInPandas(inputs, INPUT_SCHEMA)


def _encode_rows(model, inputs: list[str], precheck=None) -> tuple[list, list]:
    """Vectors (or None) and errors (or None) per input: the batch at once, item by item if it fails.
    ``precheck(input)`` raising ValueError refuses an input before the model sees it."""
    if precheck is not None:
        refused = {}
        for i, x in enumerate(inputs):
            try:
                precheck(x)
            except ValueError as e:
                refused[i] = str(e)[:500]
        if refused:
            keep = [x for i, x in enumerate(inputs) if i not in refused]
            kv, ke = _encode_rows(model, keep) if keep else ([], [])
            it = iter(zip(kv, ke, strict=True))
            pairs = [(None, refused[i]) if i in refused else next(it) for i in range(len(inputs))]
            return [v for v, _ in pairs], [e for _, e in pairs]
    try:
        return list(model.encode(inputs)), [None] * len(inputs)
    except ValueError:
        vecs: list[np.ndarray | None] = []
        errs: list[str | None] = []
        for x in inputs:
            try:
                vecs.append(model.encode([x])[0])
                errs.append(None)
            except ValueError as e:
                vecs.append(None)
                errs.append(str(e)[:500])
        return vecs, errs


def encode(
    inputs: DataFrame,
    encoder: str,
    batch_size: int = 256,
    threads: int = 1,
    partitions: int = 0,
    images: ImagePolicy | None = None,
) -> DataFrame:
    """item_id, input_hash, vector (float32, null on error), error: every input row, encoded."""
    klass = encoder_class(encoder)  # resolved (and allowed) here, on the driver
    images = images or ImagePolicy()
    # a plug-in image encoder opens the files itself: it is handed only paths the policy could read
    precheck = images.read if klass.input == "image_path" and not takes_image_policy(klass) else None

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = cached_encoder(klass, threads, images)
        for pdf in batches:
            for lo in range(0, len(pdf), batch_size):
                chunk = pdf.iloc[lo : lo + batch_size]
                vecs, errs = _encode_rows(model, chunk["input"].tolist(), precheck)
                yield pd.DataFrame(
                    {
                        "item_id": chunk["item_id"].to_numpy(),
                        "input_hash": chunk["input_hash"].to_numpy(),
                        "vector": [None if v is None else np.asarray(v, dtype=np.float32) for v in vecs],
                        "error": errs,
                    }
                )

    df = inputs.select("item_id", "input", "input_hash")
    if partitions:
        df = df.repartition(partitions, "item_id")
    return df.mapInPandas(run, VECTOR_SCHEMA)


def reuse(inputs: DataFrame, previous: DataFrame | None, version: str) -> tuple[DataFrame, DataFrame | None]:
    """(inputs to encode, reused vectors): a previous row is reused when its item, model version and
    input hash are unchanged."""
    if previous is None:
        return inputs, None
    prev = (
        previous.where(F.col("encoder_version") == F.lit(version))
        .where(F.col("vector").isNotNull())
        .select("item_id", "input_hash", "vector")
        .dropDuplicates(["item_id", "input_hash"])
    )
    reused = inputs.join(prev, ["item_id", "input_hash"], "inner").select("item_id", "input_hash", "vector")
    todo = inputs.join(prev.select("item_id", "input_hash"), ["item_id", "input_hash"], "left_anti")
    return todo, reused
