"""bench/diffusion_recipe.py --quick runs end to end and prints its table (every ratio of issue 16's benchmark: images/s
precomputed vs on-the-fly at two model sizes, EMA step and run cost, goodput with two failures) and its JSON.

Not a speed test: the quick mode's numbers mean little; this keeps the bench from rotting as the workload moves.
No Ray, no sandbox: the real diffusion loop in the bench's process, moto S3 in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ROWS = [r"sd2/8 images/cpu s, precomputed vs on-the-fly", r"sd2/8 images/wall s, precomputed vs on-the-fly",
        r"seed-tiny images/cpu s, precomputed vs on-the-fly", r"seed-tiny images/wall s, precomputed vs on-the-fly",
        r"sd2/8 step CPU s, EMA every step vs none \(in loop\)", r"sd2/8 EMA update vs step, CPU s \(isolated\)",
        r"run cost of EMA: scheduled 0.965 vs every step",
        r"goodput \(seed-tiny 32px 12 steps\), two failures vs uninterrupted",
        r"goodput \(seed-tiny 32px 12 steps\), two failures \+ process import per attempt"]


def test_diffusion_recipe_bench_prints_every_ratio(tmp_path):
    report_file = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "bench/diffusion_recipe.py", "--quick", "--json", str(report_file)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["metric", "value", "baseline", "ratio", "goal"]
    assert len(lines) == 1 + len(ROWS), result.stdout
    for line, pattern in zip(lines[1:], ROWS):
        assert re.match(pattern + r"\s{2,}\S", line), (pattern, line)
        value = re.split(r"\s{2,}", line)[1]
        assert float(value) > 0, line
    report = json.loads(report_file.read_text())
    for model in ("sd2/8", "seed-tiny"):
        for mode in ("precomputed", "on_the_fly"):
            assert report["throughput"][model][mode]["images_per_cpu_s"] > 0, (model, mode)
            assert report["throughput"][model][mode]["images_per_wall_s"] > 0, (model, mode)
    assert 0 < report["ema"]["scheduled_over_every_step"] < 0.05
    good = report["goodput"]
    assert len(good["killed_twice"]["recoveries"]) == 2 and len(good["attempt_walls_s"]) == 3
    assert 0 < good["killed_twice"]["ratio"] <= 1 and 0 < good["uninterrupted"]["ratio"] <= 1
