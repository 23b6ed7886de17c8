"""Object-store layout, progress heartbeats and checkpoint manifests, shared by operator and workloads."""
