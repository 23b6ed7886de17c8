"""TrainingJob and VectorIndex on the batch reconcile: their own checks, outputs and (VectorIndex) syncs."""

import copy
from datetime import datetime, timedelta, timezone

from kubeforge.api.kinds import KINDS
from kubeforge.controllers.batch import Observed, reconcile
from kubeforge.controllers.registry import BATCH_KINDS
from kubeforge.controllers.trainingjob import TrainingJobKind
from kubeforge.controllers.vectorindex import VectorIndexKind
from kubeforge.settings import Settings

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge", reconcile_period_seconds=2)
DONE = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}


def resource(kind, spec):
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "r", "namespace": "team", "uid": "u-1", "generation": 1}, "spec": spec}


def step(kind, obj, observed=None, now=NOW):
    plan = reconcile(kind, obj, observed or Observed(), now, SETTINGS)
    updated = copy.deepcopy(obj)
    updated["status"] = plan.status
    return plan, updated


def finish(kind, obj, result, now=NOW):
    name = obj["status"]["attempts"][-1]["rayJob"]
    return step(kind, obj, Observed(rayjobs={name: {"status": DONE}}, result=result), now)


TRAINING = {"model": {"config": {"model_type": "llama"}}, "tokenizer": {"uri": "s3://b/tok"},
            "dataset": {"uri": "s3://b/text.jsonl"}, "training": {"maxSteps": 10}}
INDEX = {"source": {"uri": "s3://b/docs/"}, "sync": {"interval": "1h"}}
BUILT = {"version": 3, "documents": 12, "chunks": 80, "indexUri": "s3://kubeforge/team/VectorIndex/r/versions/3",
         "metric": "cosine", "dims": 384, "recall": 1.0}


def test_every_batch_kind_with_a_workload_has_a_controller():
    assert set(BATCH_KINDS) == {info.kind for info in KINDS if info.shape == "RayJob"}


def test_a_cpu_training_job_asking_for_fp16_is_refused_with_what_to_do():
    spec = copy.deepcopy(TRAINING)
    spec["training"]["precision"] = "fp16"
    plan, obj = step(TrainingJobKind(), resource("TrainingJob", spec))
    assert obj["status"]["conditions"][0]["reason"] == "InvalidSpec" and plan.create == []
    assert "fp16 needs GPUs; set spec.resources.gpusPerWorker >= 1" in obj["status"]["message"]


def test_a_training_job_publishes_its_model_and_ema_model():
    kind = TrainingJobKind()
    plan, obj = step(kind, resource("TrainingJob", TRAINING))
    plan, obj = finish(kind, obj, {"modelUri": "s3://b/m", "emaModelUri": "s3://b/e", "steps": 10,
                                   "resourceUid": "u-1"})
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["output"] == {"modelUri": "s3://b/m", "emaModelUri": "s3://b/e", "steps": 10}


def test_a_training_job_shows_the_token_shards_it_trained_from():
    kind = TrainingJobKind()
    plan, obj = step(kind, resource("TrainingJob", TRAINING))
    shards = {"uri": "s3://b/_precompute/cd34/", "reused": False}
    plan, obj = finish(kind, obj, {"modelUri": "s3://b/m", "steps": 10, "tokenizedShards": shards})
    assert obj["status"]["output"]["tokenizedShards"] == shards


def test_a_diffusion_training_job_shows_what_it_skipped_and_which_latent_caches_it_used():
    kind = TrainingJobKind()
    plan, obj = step(kind, resource("TrainingJob", TRAINING))
    skipped = {"corruptImage": {"count": 1, "examples": ["shard-00001.tar/000012: cannot identify image file"]}}
    latents = [{"resolution": 32, "uri": "s3://b/_precompute/ab12/", "reused": True}]
    plan, obj = finish(kind, obj, {"modelUri": "s3://b/pipeline", "steps": 8, "skipped": skipped,
                                   "latents": latents, "notForStatus": 1})
    assert obj["status"]["output"] == {"modelUri": "s3://b/pipeline", "steps": 8, "skipped": skipped,
                                       "latents": latents}


def test_a_training_jobs_goodput_is_shown_while_it_runs_and_its_final_account_on_success():
    from kubeforge.storage.progress import Progress

    kind = TrainingJobKind()
    plan, obj = step(kind, resource("TrainingJob", TRAINING))
    name = obj["status"]["attempts"][-1]["rayJob"]
    beat = Progress.model_validate({"attempt": 1, "phase": "Training", "step": 4, "totalSteps": 10,
                                    "updatedAt": "2026-11-24T12:00:00Z", "goodput": {
                                        "ratio": 0.5, "productiveSeconds": 4.0, "wallSeconds": 8.0}})
    plan, obj = step(kind, obj, Observed(rayjobs={name: {"status": {"jobDeploymentStatus": "Running",
                                                                   "jobStatus": "RUNNING"}}}, progress=beat))
    assert obj["status"]["goodput"] == {"ratio": 0.5, "productiveSeconds": 4.0, "wallSeconds": 8.0,
                                        "recoveries": []}
    final = {"ratio": 0.4, "productiveSeconds": 8.0, "wallSeconds": 20.0,
             "recoveries": [{"attempt": 2, "resumedAtStep": 4, "stepsLost": 1, "recoverySeconds": 3.0}]}
    plan, obj = finish(kind, obj, {"modelUri": "s3://b/m", "steps": 10, "goodput": final})
    assert obj["status"]["goodput"] == final and "goodput" not in obj["status"]["output"]


def test_a_vector_index_serves_its_version_and_syncs_on_its_interval_and_on_a_spec_change():
    kind = VectorIndexKind()
    plan, obj = step(kind, resource("VectorIndex", INDEX))
    plan, obj = finish(kind, obj, BUILT)
    status = obj["status"]
    assert (status["phase"], status["currentVersion"], status["documents"], status["chunks"]) == (
        "Ready", 3, 12, 80)
    assert status["lastSyncTime"] == "2026-11-24T12:00:00Z" and status["output"]["indexUri"].endswith("/3")
    assert status["message"] == "version 3 ready: 12 documents, 80 chunks (sync 1)"
    assert plan.requeue_after == 3600

    plan, obj = step(kind, obj, now=NOW + timedelta(minutes=59))
    assert plan.create == [] and "endTime" in obj["status"]["run"]
    plan, obj = step(kind, obj, now=NOW + timedelta(hours=1))
    assert obj["status"]["run"]["reason"] == "Scheduled" and obj["status"]["run"]["number"] == 2
    assert obj["status"]["conditions"][0]["status"] == "True"  # still Ready on version 3

    plan, obj = finish(kind, obj, {**BUILT, "version": 4}, now=NOW + timedelta(hours=1, minutes=5))
    obj["metadata"]["generation"] = 2  # e.g. syncGeneration bumped: a sync now, not in an hour
    plan, obj = step(kind, obj, now=NOW + timedelta(hours=1, minutes=6))
    assert (obj["status"]["run"]["number"], obj["status"]["run"]["reason"]) == (3, "SpecChanged")
    assert obj["status"]["currentVersion"] == 4


def test_a_build_below_min_recall_is_ready_but_degraded_with_the_number():
    kind = VectorIndexKind()
    plan, obj = step(kind, resource("VectorIndex", INDEX))
    plan, obj = finish(kind, obj, {**BUILT, "recall": 0.81, "recallK": 10, "minRecall": 0.95,
                                   "skipped": {"EmptyFile": {"count": 1, "examples": ["docs/empty.md"]}}})
    status = obj["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RecallBelowMinimum")
    assert "recall@10 of the approximate index is 0.81" in degraded["message"]
    assert status["quality"] == {"recallAt10": 0.81} and status["phase"] == "Ready"
    assert status["skipped"]["EmptyFile"]["count"] == 1


def test_a_ray_cluster_override_that_cannot_be_merged_is_an_invalid_spec_before_any_attempt():
    spec = copy.deepcopy(TRAINING)
    spec["ray"] = {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}}
    plan, obj = step(TrainingJobKind(), resource("TrainingJob", spec))
    assert obj["status"]["conditions"][0]["reason"] == "InvalidSpec" and "attempts" not in obj["status"]
    assert "containers" in obj["status"]["message"] and plan.create == []
