"""VectorIndex: build a versioned vector index from documents in the object store (`python -m
kubeforge_workloads.index`), and query it (`kubeforge_workloads.index.query`)."""
