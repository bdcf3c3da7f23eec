"""The run report's sections as pure functions: pandas frames in, HTML and matplotlib figures out.

The job (``jobs/report.py``) reads the warehouse, one query per section input, and hands the frames to
these functions; nothing here touches Spark or the warehouse, so a section renders (and is tested) from
small hand-made frames. Each section returns a ``Rendered``; ``page`` assembles them into one page.

    html.py        escaping, tables, figures, the page and its CSS; ``Rendered`` and ``Missing``
    runs.py        Runs and Lineage (with the layered DAG layout)
    quality.py     Item-to-item quality
    neighbors.py   Neighbor examples
    maps.py        Embedding maps (t-SNE / PCA)
    sids.py        Semantic IDs
    gbdt.py        GBDT
    quarantine.py  Quarantine and ingest's reconciliation
"""
