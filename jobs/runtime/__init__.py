"""The runtime every job shares: params, Spark/Ray sessions, Delta I/O, manifests, the CLI."""
