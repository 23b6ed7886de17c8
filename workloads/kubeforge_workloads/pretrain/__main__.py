"""`python -m kubeforge_workloads.pretrain`: the RayJob entrypoint of a TrainingJob (the Ray driver)."""

from kubeforge_workloads.pretrain.driver import main

main()
