"""recfactory: a batch feature-and-embedding factory for recommender systems.

The repo root is this package's folder (see setup.cfg `package_dir`): `recfactory.jobs`,
`recfactory.features`, `recfactory.graph` and `recfactory.tokenizers` are the card's folders.
"""

__version__ = "0.1.0"
