"""recfactory: a batch feature-and-embedding factory for recommender systems.

The repo root is this package's folder (see setup.cfg `package_dir`): `recfactory.jobs`,
`recfactory.features`, `recfactory.graph` and `recfactory.tokenizers` are the card's folders.

Run from a checkout's root (`python -m recfactory`, `python -m pytest`, a Spark worker started
there), Python puts that folder on sys.path, and its `tokenizers/` folder would then shadow Hugging
Face's `tokenizers` (which the text encoders and transformers import). Importing recfactory takes
every checkout off sys.path — this one, and any other folder laid out as one (a second clone as the
working directory while a wheel or another checkout is installed) — and forgets a `tokenizers`
already imported from one: recfactory itself is found through its installed mapping, never through
those entries.
"""

import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

_ROOT = _Path(__file__).resolve().parent


def _is_checkout(folder: _Path) -> bool:
    """A folder laid out as a recfactory checkout (this one or another): its tokenizers/ is ours."""
    return (
        (folder / "tokenizers" / "__init__.py").is_file()
        and (folder / "jobs" / "runtime").is_dir()
        and (folder / "__init__.py").is_file()
    )


def _drop_repo_root() -> None:
    keep = []
    for entry in _sys.path:
        try:
            folder = _Path(entry or ".").resolve()
            if folder == _ROOT or _is_checkout(folder):
                continue
        except OSError:
            pass
        keep.append(entry)
    _sys.path[:] = keep
    shadow = _sys.modules.get("tokenizers")
    if shadow is not None and _is_checkout(_Path(getattr(shadow, "__file__", "") or "/").resolve().parent.parent):
        for name in [m for m in _sys.modules if m == "tokenizers" or m.startswith("tokenizers.")]:
            del _sys.modules[name]


_drop_repo_root()
