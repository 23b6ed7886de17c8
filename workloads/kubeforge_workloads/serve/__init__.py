"""ServingEndpoint: the OpenAI-compatible Ray Serve application (`kubeforge_workloads.serve.app:build`)."""
