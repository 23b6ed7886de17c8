import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("KUBEFORGE_SHARED_DIR", REPO_ROOT.parent / "shared"))
KUBERAY_CRDS = SHARED_DIR / "kuberay-crds"


def pytest_configure(config):
    """A test run stopped by SIGTERM (`timeout`, CI cancelling, `kill`) unwinds like Ctrl-C, so session fixtures
    tear down what they started. The sandbox's components run in sessions of their own (a `kubeforge dev up`
    sandbox must outlive its command), and without this they outlived a terminated test run."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
