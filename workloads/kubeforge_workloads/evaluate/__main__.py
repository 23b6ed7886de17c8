"""`python -m kubeforge_workloads.evaluate`: the RayJob entrypoint of an EvalRun."""

from kubeforge_workloads.evaluate.run import main

main()
