"""recfactory: a batch feature-and-embedding factory for recommender systems.

The repo root is this package's folder (see setup.cfg `package_dir`): `recfactory.jobs`,
`recfactory.features`, `recfactory.graph` and `recfactory.tokenizers` are the card's folders.

Run from the repo root (`python -m recfactory`, `python -m pytest`, a Spark worker started there),
Python puts the repo root on sys.path, and its `tokenizers/` folder would then shadow Hugging
Face's `tokenizers` (which the text encoders and transformers import). Importing recfactory takes
the repo root off sys.path: recfactory itself is found through its installed mapping, never
through that entry.
"""

import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

_ROOT = _Path(__file__).resolve().parent


def _drop_repo_root() -> None:
    keep = []
    for entry in _sys.path:
        try:
            if _Path(entry or ".").resolve() == _ROOT:
                continue
        except OSError:
            pass
        keep.append(entry)
    _sys.path[:] = keep
    shadow = _sys.modules.get("tokenizers")
    if shadow is not None and _Path(getattr(shadow, "__file__", "") or "/").resolve().parent == _ROOT / "tokenizers":
        del _sys.modules["tokenizers"]


_drop_repo_root()
