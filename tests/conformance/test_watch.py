"""List/watch semantics: resourceVersion resume, selectors on watch, DELETED after finalizers, 410 Gone."""

from kubernetes import watch

from tests.conformance.conftest import finetune

G, V, NS, P = "kubeforge.dev", "v1alpha1", "default", "finetunes"


def events(custom, **kwargs):
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, P, timeout_seconds=1, **kwargs)
    return [(e["type"], e["object"]["metadata"]["name"]) for e in stream]


def test_watch_from_a_resource_version_replays_later_events_only(custom):
    listed = custom.list_namespaced_custom_object(G, V, NS, P)
    rv = listed["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("w-one"))
    custom.patch_namespaced_custom_object(G, V, NS, P, "w-one", {"metadata": {"labels": {"x": "1"}}})
    custom.delete_namespaced_custom_object(G, V, NS, P, "w-one")
    seen = events(custom, resource_version=rv)
    assert seen == [("ADDED", "w-one"), ("MODIFIED", "w-one"), ("DELETED", "w-one")]


def test_watch_without_resource_version_starts_with_current_state(custom):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("w-two"))
    assert ("ADDED", "w-two") in events(custom)


def test_watch_honours_field_selectors(custom):
    rv = custom.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("w-three"))
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("w-four"))
    seen = events(custom, resource_version=rv, field_selector="metadata.name=w-four")
    assert seen == [("ADDED", "w-four")]


def test_too_old_resource_version_is_410(server, custom):
    """Once the bounded history has moved past a resourceVersion, watching from it answers 410 Gone."""
    history = server.store.history[("kubeforge.dev", "finetunes")]
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("w-many"))
    newest = history[-1]
    history.extend([newest] * history.maxlen)  # as if maxlen more writes had happened since
    try:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, P, resource_version="2",
                                  timeout_seconds=1))
        raised = None
    except Exception as error:  # the client raises ApiException(410) for an ERROR event / 410 answer
        raised = error
    assert raised is not None and "410" in str(raised)
