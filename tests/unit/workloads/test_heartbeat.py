"""The heartbeat is a thread in the training process: when the process is stopped, the heartbeat stops too."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kubeforge_workloads.common.heartbeat import Heartbeat
    target = Path(sys.argv[1])
    beat = Heartbeat(lambda p: target.write_text(p.to_json()), attempt=3, interval=0.1).start()
    beat.update(phase="Training", step=5, total_steps=10, loss=1.25, throughput=100.0)
    while True:
        time.sleep(1)
""")


def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None


def test_heartbeat_stops_when_the_process_is_stopped(tmp_path):
    target = tmp_path / "progress.json"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(target)])
    try:
        deadline = time.monotonic() + 30
        while (read(target) or {}).get("step") != 5:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        first = read(target)
        assert first["attempt"] == 3 and first["phase"] == "Training" and first["totalSteps"] == 10
        time.sleep(0.3)
        assert (read(target) or {}).get("updatedAt") != first["updatedAt"]  # it keeps beating
        os.kill(process.pid, signal.SIGSTOP)
        time.sleep(0.2)
        frozen = target.read_text()
        time.sleep(0.6)
        assert target.read_text() == frozen  # stopped process, stopped heartbeat
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.5)
        assert target.read_text() != frozen
    finally:
        process.kill()
        process.wait()
