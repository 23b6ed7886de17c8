"""The benchmark scripts run end to end on a few steps and print every number the notes quote.

Not a speed test (speed lives in the printed ratios): it keeps `bench/` from rotting as the code moves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_finetune_overhead_bench_prints_its_ratios():
    result = subprocess.run([sys.executable, "bench/finetune_overhead.py", "--steps", "4", "--every", "2",
                             "--repeats", "1", "--threads", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for ratio in ("step_throughput_ratio_median", "of_which_ray_train_ratio", "of_which_kubeforge_ratio",
                  "checkpoint_speed_ratio_raw_over_commit"):
        assert report[ratio] > 0, ratio
    assert report["checkpoint_files"] > 1 and report["checkpoint_bytes"] > 0
    assert len(report["kubeforge_train_runtime_s"]) == len(report["plain_trainer_train_runtime_s"]) == 1


def test_operator_scale_bench_reports_every_metric_for_both_operators():
    result = subprocess.run([sys.executable, "bench/operator_scale.py", "--n", "5", "--window", "5", "--samples", "3",
                             "--settle", "2", "--heartbeat-timeout", "0", "--timeout", "180", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-8000:]
    report = json.loads(result.stdout)
    rows = {row["metric"]: row for row in report["metrics"]}
    assert set(rows) == {"rayjobs_created_s", "steady_requests_per_resource_min",
                         "steady_status_writes_per_resource_min", "steady_object_store_reads_per_resource_min",
                         "training_requests_per_resource_min", "training_status_writes_per_resource_min",
                         "training_object_store_reads_per_resource_min", "latency_p50_s", "latency_p95_s"}
    for name, row in rows.items():
        assert row["kubeforge"] is not None and row["baseline"] is not None, name
    assert rows["rayjobs_created_s"]["kubeforge"] > 0 and rows["rayjobs_created_s"]["baseline"] > 0
    assert len(report["detail"]["latency_samples_s"]["kubeforge"]) == 3
