"""Recovery time in the sandbox: failure injected (chaos kill, NodeLost) → first training step after resume.

Also reports the same run's cold start (apply → first step) as the honest baseline: a recovery can hardly
be faster than starting a fresh attempt, so the interesting number is recovery / cold start.

    .venv/bin/python bench/recovery_time.py [--state-dir DIR] [--backoff 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--base-port", type=int, default=23000)
    parser.add_argument("--backoff", type=int, default=1, help="failurePolicy.backoff.initialSeconds")
    args = parser.parse_args()

    from kubeforge.dev import sandbox
    from mlflow.tracking import MlflowClient

    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="kubeforge-bench-"))
    os.environ.setdefault("KUBEFORGE_RECONCILE_PERIOD_SECONDS", "1")
    state = sandbox.up(state_dir, base_port=args.base_port)
    env = {**os.environ, **state.client_env()}

    def kubectl(*a, input=None):
        return subprocess.run(["kubectl", *a], env=env, capture_output=True, text=True, input=input, check=True).stdout

    def status():
        return json.loads(kubectl("get", "ft", "bench-recovery", "-o", "json")).get("status") or {}

    try:
        obj = copy.deepcopy(yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text()))
        obj["metadata"] = {"name": "bench-recovery"}
        obj["spec"]["training"].update(maxSteps=40, checkpointEverySteps=5)
        obj["spec"]["failurePolicy"]["backoff"] = {"initialSeconds": args.backoff, "maxSeconds": args.backoff}
        obj["spec"]["ray"] = {"runtimeEnv": {"env_vars": {"KUBEFORGE_STEP_DELAY_SECONDS": "0.3"}}}
        applied = time.time()
        kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
        while "step-10" not in ((status().get("progress") or {}).get("lastCheckpoint") or ""):
            time.sleep(0.3)
        killed = time.time()
        subprocess.run([sys.executable, "-m", "kubeforge", "dev", "chaos", "kill", "bench-recovery-1",
                        "--reason", "NodeLost"], env=env, check=True)
        while status().get("phase") not in ("Succeeded", "Failed"):
            time.sleep(1)
        final = status()
        run_id = final["output"]["mlflowRunId"]
        history = MlflowClient(state.mlflow_url).get_metric_history(run_id, "loss")
        first_step = min(m.timestamp for m in history) / 1000
        resumed_step = min(m.timestamp for m in history if m.timestamp / 1000 > killed) / 1000
        cold, recovery = first_step - applied, resumed_step - killed
        print(json.dumps({"phase": final["phase"], "attempts": len(final["attempts"]),
                          "cold_start_s": round(cold, 1), "recovery_s": round(recovery, 1),
                          "backoff_s": args.backoff, "recovery_over_cold_start": round(recovery / cold, 2)}, indent=1))
    finally:
        sandbox.down(state_dir)


if __name__ == "__main__":
    main()
