"""Controllers: one module per kind with the pure reconcile logic; `wiring` connects them to kopf."""
