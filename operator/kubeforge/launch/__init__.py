"""Pure builders of KubeRay objects (RayJob, RayService) from Kubeforge resources."""
