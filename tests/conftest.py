import os
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_tracking_uri():
    """A module that points MLflow at a store of its own (`mlflow.set_tracking_uri`, which also exports
    MLFLOW_TRACKING_URI for subprocesses) leaves the next module what it found, not a store under its deleted tmp
    directory. Autouse and module-scoped, so it wraps the module's own fixtures and tears down after them."""
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    before = utils._tracking_uri if utils else None
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and utils._tracking_uri != before:
        utils.set_tracking_uri(before)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
