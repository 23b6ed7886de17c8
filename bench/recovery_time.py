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
FINAL = ("Succeeded", "Failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--base-port", type=int, default=23000)
    parser.add_argument("--backoff", type=int, default=1, help="failurePolicy.backoff.initialSeconds")
    args = parser.parse_args()

    from kubeforge.dev import sandbox
    from kubeforge.storage.layout import checkpoint_step_of
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
        obj["spec"]["ray"] = {"runtimeEnv": {"env_vars": {"KUBEFORGE_STEP_DELAY_SECONDS": "0.5"}}}
        applied = time.time()
        kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
        while (checkpoint_step_of(((current := status()).get("progress") or {}).get("lastCheckpoint")) or 0) < 10:
            if current.get("phase") in FINAL:
                sys.exit("the run finished before the failure could be injected: raise KUBEFORGE_STEP_DELAY_SECONDS")
            time.sleep(0.2)
        killed = time.time()
        subprocess.run([sys.executable, "-m", "kubeforge", "dev", "chaos", "kill", "bench-recovery-1",
                        "--reason", "NodeLost"], env=env, check=True)
        detected = None
        while (current := status()).get("phase") not in FINAL:
            attempts = current.get("attempts") or []
            if detected is None and attempts and attempts[0].get("outcome") == "Failed":
                detected = time.time()
            time.sleep(0.2)
        final = current
        run_id = final["output"]["mlflowRunId"]
        history = MlflowClient(state.mlflow_url).get_metric_history(run_id, "loss")
        first_step = min(m.timestamp for m in history) / 1000
        # The first step after the resume point, as the resumed attempt logged it (attempt 1 may have logged the
        # same step before the kill landed: the later write is the resumed attempt's).
        resume_point = checkpoint_step_of(final["attempts"][-1]["resumedFrom"])
        resumed_step = max(m.timestamp for m in history if m.step == resume_point + 1) / 1000
        cold, recovery = first_step - applied, resumed_step - killed
        print(json.dumps({"phase": final["phase"], "attempts": len(final["attempts"]),
                          "resumed_from": final["attempts"][-1].get("resumedFrom"),
                          "cold_start_s": round(cold, 1), "recovery_s": round(recovery, 1),
                          "of_which_detection_s": round(detected - killed, 1) if detected else None,
                          "backoff_s": args.backoff, "recovery_over_cold_start": round(recovery / cold, 2)}, indent=1))
    finally:
        sandbox.down(state_dir)


if __name__ == "__main__":
    main()
