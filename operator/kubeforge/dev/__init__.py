"""The local sandbox: API emulator, local KubeRay, S3, MLflow, Ray head, operator on loopback."""
