"""`python -m kubeforge_workloads.index`: the RayJob entrypoint (the Ray driver) of a VectorIndex sync."""

from kubeforge_workloads.index.build import main

main()
