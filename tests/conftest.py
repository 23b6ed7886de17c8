import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("KUBEFORGE_SHARED_DIR", REPO_ROOT.parent / "shared"))
KUBERAY_CRDS = SHARED_DIR / "kuberay-crds"
