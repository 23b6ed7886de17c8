"""`python -m kubeforge_workloads.finetune`: the RayJob entrypoint (the Ray driver)."""

from kubeforge_workloads.finetune.driver import main

main()
