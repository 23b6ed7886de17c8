"""Field selectors compare values as the real server's field sets hold them: booleans as strconv.FormatBool
writes them ("true"/"false"), an unset bool field of a built-in as its zero value."""

from tests.conformance.conftest import gadget

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "gadgets"


def test_boolean_selectable_fields_of_custom_resources_compare_as_true_and_false(custom, kubectl):
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("sel-locked", locked=True))
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("sel-open", locked=False))

    def names(selector):
        return {o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
            G, V, NS, P, field_selector=selector)["items"]}

    assert names("spec.locked=true") == {"sel-locked"}
    assert names("spec.locked=false") == {"sel-open"}
    assert names("spec.locked=True") == set()  # Go writes booleans in lower case
    assert "sel-locked" in names("spec.locked!=false") and "sel-open" not in names("spec.locked!=false")
    listed = kubectl("get", "gadgets", "--field-selector", "spec.locked=true", "-o", "name").stdout.split()
    assert listed == ["gadget.conformance.kubeforge.dev/sel-locked"]


def test_pod_host_network_selector_reads_an_unset_field_as_false(core):
    core.create_namespaced_pod(NS, {"metadata": {"name": "sel-host"}, "spec": {
        "hostNetwork": True, "containers": [{"name": "c", "image": "i"}]}})
    core.create_namespaced_pod(NS, {"metadata": {"name": "sel-pod"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})

    def names(selector):
        return {p.metadata.name for p in core.list_namespaced_pod(NS, field_selector=selector).items}

    assert names("spec.hostNetwork=true") == {"sel-host"}
    assert "sel-pod" in names("spec.hostNetwork=false") and "sel-host" not in names("spec.hostNetwork=false")
