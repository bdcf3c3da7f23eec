"""Item graph, Swing/ItemCF, random walks, skip-gram, EGES (later issues)."""
