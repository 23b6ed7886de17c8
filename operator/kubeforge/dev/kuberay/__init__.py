"""Local KubeRay: runs ray.io/v1 RayJobs on the sandbox's Ray head and writes KubeRay-shaped status.

    python -m kubeforge.dev.kuberay --kubeconfig PATH --ray-address http://127.0.0.1:8265
"""
