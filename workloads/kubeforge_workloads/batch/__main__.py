"""`python -m kubeforge_workloads.batch`: the RayJob entrypoint (the Ray driver) of `kubeforge batch`."""

from kubeforge_workloads.batch.run import main

main()
