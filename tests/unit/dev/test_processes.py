"""die_with_parent: a child started with it is killed by the kernel when its parent dies, even by SIGKILL."""

import os
import signal
import subprocess
import sys

import psutil

PARENT = """
import subprocess, sys, time
from kubeforge.dev.processes import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_child_dies_with_its_sigkilled_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        gone, _ = psutil.wait_procs([child], timeout=10)
        assert gone, "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(10)
        if child is not None and child.is_running():  # only when the test fails: nothing it starts may stay
            child.kill()
