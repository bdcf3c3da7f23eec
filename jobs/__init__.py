"""Thin job entry points (one per file, each spark-submit-able) and the runtime they share."""
