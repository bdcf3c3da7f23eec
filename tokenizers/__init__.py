"""Content encoders, QARM alignment, RQ-KMeans semantic IDs, GBDT leaves (later issues)."""
