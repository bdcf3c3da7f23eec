"""Spark transforms: canonical event/item schema, validation, data sources, synthetic data."""
