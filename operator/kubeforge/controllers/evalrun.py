"""EvalRun: a one-shot batch kind whose result is a verdict. The workload measures (kubeforge_workloads.evaluate);
the operator resolves what it evaluates from its dependencies and judges the result against spec.gate, so a
failed gate ends the run Failed with reason GateFailed and no retry."""

from __future__ import annotations

import operator
from typing import Any, Optional

from kubeforge.api.evalrun import DEFAULT_WEIGHTS, EvalRunSpec, GateOp, OpenAICompatible
from kubeforge.api.kinds import kind_info
from kubeforge.api.status import Reason
from kubeforge.controllers.batch import Dependency, DependencyUnusable, KindBase, Verdict

ENDPOINT_KEY_ENV = "KUBEFORGE_ENDPOINT_API_KEY"
JUDGE_KEY_ENV = "KUBEFORGE_JUDGE_API_KEY"
FAILED_FRACTION = "rows/failedFraction"
LATENCY_SUMMARY = {"latency/p50Seconds": "latencyP50Seconds", "latency/p95Seconds": "latencyP95Seconds"}
"""Latency metrics and their status.summary keys (JSONPath-friendly, for printer columns)."""
COMPARE = {GateOp.GE: operator.ge, GateOp.LE: operator.le, GateOp.GT: operator.gt, GateOp.LT: operator.lt}
OUTPUT_KEYS = ("metrics", "rows", "resultsUri", "mlflowRunId", "trackingError")


def known_metrics(spec: EvalRunSpec) -> set[str]:
    """Every metric name a run of this spec produces: what a gate may name."""
    names = {FAILED_FRACTION}
    if spec.target.endpoint_ref:
        names.update(LATENCY_SUMMARY)
    if spec.judge:
        names.add("judge/score")
        names.update(f"judge/{name}" for name in criteria_names(spec))
    indexes = spec.target.vector_index_refs
    at_k = [f"{metric.value}@{k}" for metric in spec.retrieval.metrics for k in spec.retrieval.k]
    names.update(f"retrieval/{index}/{name}" for index in indexes for name in at_k)
    if len(indexes) == 1:
        names.update(f"retrieval/{name}" for name in at_k)
    return names


def criteria_names(spec: EvalRunSpec) -> list[str]:
    return [c.name for c in spec.judge.criteria] if spec.judge and spec.judge.criteria else list(DEFAULT_WEIGHTS)


def evaluate_gate(spec: EvalRunSpec, result: dict) -> list[dict]:
    """Each gate condition with the run's value; a judged run also needs failed rows within maxFailedFraction."""
    metrics = result.get("metrics") or {}
    checks = [(g.metric, g.op, g.value) for g in spec.gate]
    if spec.judge:
        checks.append((FAILED_FRACTION, GateOp.LE, spec.judge.max_failed_fraction))
    results = []
    for metric, op, value in checks:
        actual = metrics.get(metric)
        entry: dict[str, Any] = {"metric": metric, "op": op.value, "value": value,
                                 "passed": actual is not None and COMPARE[op](actual, value)}
        if actual is not None:
            entry["actual"] = actual
        results.append(entry)
    return results


def _describe(entry: dict) -> str:
    actual = entry.get("actual")
    shown = "not produced" if actual is None else f"{actual:.4g}"
    return f"{entry['metric']} {shown} (needs {entry['op']} {entry['value']:g})"


def _endpoint_input(name: str, dependencies: dict[Dependency, dict], model: Optional[str], key_env: str,
                    field: str) -> dict:
    dependency = dependencies[("ServingEndpoint", name)]
    status = dependency.get("status") or {}
    served = [m.get("name") for m in status.get("models") or []]
    if not status.get("url") or not served:
        raise DependencyUnusable(f"ServingEndpoint {name} reports no URL or models yet")
    if model and model not in served:
        raise DependencyUnusable(f"ServingEndpoint {name} serves {', '.join(served)}; {field} {model!r} is not one "
                                 "of them: set it to one of those names")
    entry = {"name": name, "url": status["url"], "model": model or served[0]}
    secret = status.get("apiKeySecret")  # what the endpoint accepts; the operator's index keeps no spec
    if secret:
        entry.update(apiKeyEnv=key_env, apiKeySecret={"name": secret["name"], "key": secret["key"]})
    return entry


def _external_judge(judge: OpenAICompatible) -> dict:
    entry = {"name": None, "url": judge.base_url.rstrip("/"), "model": judge.model}
    if judge.api_key_secret_ref:
        ref = judge.api_key_secret_ref
        entry.update(apiKeyEnv=JUDGE_KEY_ENV, apiKeySecret={"name": ref.name, "key": ref.key})
    return entry


class EvalRunKind(KindBase):
    info = kind_info("EvalRun")
    progress_unit = "rows"

    def validate(self, spec: EvalRunSpec, obj: dict) -> list[str]:
        problems = []
        if spec.judge and not spec.target.endpoint_ref:
            problems.append("spec.judge grades answers of spec.target.endpointRef: set it, or remove spec.judge")
        names = criteria_names(spec)
        if len(set(names)) != len(names):
            problems.append(f"spec.judge.criteria names must be unique (got {', '.join(names)})")
        known = known_metrics(spec)
        for number, gate in enumerate(spec.gate):
            if gate.metric not in known:
                problems.append(f"spec.gate[{number}].metric {gate.metric!r} is not produced by this EvalRun; "
                                f"it produces: {', '.join(sorted(known))}")
        return problems

    def dependencies(self, spec: EvalRunSpec) -> list[Dependency]:
        needed: list[Dependency] = []
        if spec.target.endpoint_ref:
            needed.append(("ServingEndpoint", spec.target.endpoint_ref))
        needed += [("VectorIndex", name) for name in spec.target.vector_index_refs]
        if spec.judge and spec.judge.endpoint_ref:
            needed.append(("ServingEndpoint", spec.judge.endpoint_ref))
        return list(dict.fromkeys(needed))

    def inputs(self, spec: EvalRunSpec, dependencies: dict[Dependency, dict]) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        target = spec.target
        if target.endpoint_ref:
            inputs["endpoint"] = _endpoint_input(target.endpoint_ref, dependencies, target.model, ENDPOINT_KEY_ENV,
                                                 "spec.target.model")
        if spec.judge and spec.judge.endpoint_ref:
            inputs["judge"] = _endpoint_input(spec.judge.endpoint_ref, dependencies, spec.judge.model,
                                              JUDGE_KEY_ENV, "spec.judge.model")
        elif spec.judge:
            inputs["judge"] = _external_judge(spec.judge.openai_compatible)
        indexes = {}
        for name in target.vector_index_refs:
            status = dependencies[("VectorIndex", name)].get("status") or {}
            if not status.get("currentVersion") or not status.get("storagePrefix"):
                raise DependencyUnusable(f"VectorIndex {name} has no committed version yet")
            indexes[name] = {"uri": status["storagePrefix"], "version": status["currentVersion"]}
        if indexes:
            inputs["indexes"] = indexes
        return inputs

    def secret_env(self, spec: EvalRunSpec, inputs: dict[str, Any]) -> list[dict]:
        return [{"name": entry["apiKeyEnv"], "valueFrom": {"secretKeyRef": dict(entry["apiKeySecret"])}}
                for entry in (inputs.get("endpoint"), inputs.get("judge")) if entry and entry.get("apiKeyEnv")]

    def verdict(self, spec: EvalRunSpec, result: dict) -> Verdict:
        failing = [entry for entry in evaluate_gate(spec, result) if not entry["passed"]]
        if not failing:
            return Verdict(passed=True)
        return Verdict(passed=False, reason=Reason.GATE_FAILED.value,
                       message="gate failed: " + "; ".join(_describe(entry) for entry in failing))

    def output(self, result: dict) -> dict:
        return {key: result[key] for key in OUTPUT_KEYS if result.get(key) is not None}

    def summary(self, spec: EvalRunSpec, result: dict, finished_at: str) -> dict:
        metrics = result.get("metrics") or {}
        summary: dict[str, Any] = {}
        if "judge/score" in metrics:
            summary["judgeScore"] = metrics["judge/score"]
            summary["judge"] = {name: metrics[f"judge/{name}"] for name in criteria_names(spec)
                                if f"judge/{name}" in metrics}
        retrieval = {name: (entry or {}).get("metrics") or {} for name, entry in (result.get("indexes") or {}).items()}
        if retrieval:
            summary["retrieval"] = retrieval
        for metric, key in LATENCY_SUMMARY.items():
            if metric in metrics:
                summary[key] = metrics[metric]
        return {"summary": summary, "rows": result.get("rows") or {}, "gate": evaluate_gate(spec, result)}

    def conditions(self, spec: EvalRunSpec, result: dict) -> list[tuple[str, bool, str, str]]:
        verdict = self.verdict(spec, result)
        if verdict.passed:
            held = len(evaluate_gate(spec, result))
            return [("Passed", True, Reason.GATE_PASSED.value,
                     f"all {held} gate condition(s) held" if held else "no gate conditions: the run completed")]
        return [("Passed", False, verdict.reason, verdict.message)]
