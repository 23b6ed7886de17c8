"""How a VectorIndex build's embedding actors share the Ray workers: every layout leaves each worker room for a read
task (a KubeRay head holds no CPUs), CPU actors are single-threaded and as many as the worker's memory holds."""

from __future__ import annotations

import pytest

from kubeforge.api.shared import Resources
from kubeforge_workloads.index.embedding import ActorLayout, actor_layout, model_bytes, model_path

MINILM = 92 * 10**6


def resources(**fields) -> Resources:
    return Resources.model_validate(fields)


@pytest.mark.parametrize("fields,use_gpu,size", [
    ({"workers": 1, "cpusPerWorker": 1}, False, MINILM),
    ({"workers": 1, "cpusPerWorker": 2}, False, MINILM),
    ({"workers": 3, "cpusPerWorker": 8, "memory": "16Gi"}, False, MINILM),
    ({"workers": 2, "cpusPerWorker": 4}, False, None),
    ({"workers": 1, "cpusPerWorker": 0.5}, False, MINILM),
    ({"workers": 2, "cpusPerWorker": 8, "gpusPerWorker": 2}, True, MINILM),
    ({"workers": 1, "cpusPerWorker": 1, "gpusPerWorker": 1}, True, MINILM),
])
def test_every_worker_keeps_room_for_a_read_task_beside_its_actors(fields, use_gpu, size):
    spec = resources(**fields)
    layout = actor_layout(spec, use_gpu, size)
    per_worker = layout.actors // spec.workers
    assert layout.actors % spec.workers == 0
    assert 0 < layout.read_cpus
    assert per_worker * layout.cpus + layout.read_cpus <= spec.cpus_per_worker + 1e-9


def test_cpu_actors_are_one_thread_each_one_per_whole_cpu():
    assert actor_layout(resources(workers=1, cpusPerWorker=2), False, MINILM) == ActorLayout(2, 0.875, 0, 1, 0.25)
    assert actor_layout(resources(workers=3, cpusPerWorker=8, memory="16Gi"), False, MINILM).actors == 24


def test_cpu_actors_are_as_many_as_the_workers_memory_holds():
    small = actor_layout(resources(workers=1, cpusPerWorker=16, memory="4Gi"), False, MINILM)
    assert (small.actors, small.threads) == (2, 8)
    large_model = actor_layout(resources(workers=1, cpusPerWorker=16, memory="16Gi"), False, 1_340_000_000)
    assert (large_model.actors, large_model.threads) == (2, 8)


def test_a_model_of_unknown_size_gets_one_actor_per_worker_with_every_thread():
    assert actor_layout(resources(workers=2, cpusPerWorker=4), False, None) == ActorLayout(2, 3.75, 0, 4, 0.25)


def test_gpu_actors_are_one_per_gpu_and_leave_the_other_cpus_to_reading():
    assert actor_layout(resources(workers=2, cpusPerWorker=8, gpusPerWorker=2), True, MINILM) == \
        ActorLayout(4, 1.0, 1, 0, 0.25)


def test_model_bytes_is_the_size_of_a_local_model_and_unknown_for_a_hub_name():
    assert 80 * 10**6 < model_bytes(model_path("all-MiniLM-L6-v2")) < 120 * 10**6
    assert model_bytes("BAAI/bge-small-en-v1.5") is None
