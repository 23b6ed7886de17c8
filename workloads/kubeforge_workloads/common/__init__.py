"""Pieces every batch workload reuses: storage, heartbeat, checkpoints, failures, MLflow, node check."""
