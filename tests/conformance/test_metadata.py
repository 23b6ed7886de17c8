"""Object metadata validated as kube-apiserver validates it (ValidateObjectMetaAccessor): names per kind,
generateName, label keys and values, annotation keys and their total size; 422 Invalid with the real
server's wording and causes, on create, update, patch and server-side apply."""

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.conformance.conftest import gadget, raw, status_of

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "gadgets"
BASE = f"/apis/{G}/{V}/namespaces/{NS}/{P}"
SUBDOMAIN = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
             "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
             r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
DNS1035 = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
           "character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123', regex used for "
           "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
LABEL_VALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
               "must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345', regex "
               "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
NAME_PART = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
             "alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc', regex used for validation is "
             "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
LONG_VALUE = "v" * 64


def invalid(error: ApiException, kind: str, name: str) -> tuple[str, list[dict]]:
    """The errors after '<Kind> "<name>" is invalid: ' and the causes of a 422 Invalid Status."""
    assert error.status == 422, error.body
    status = status_of(error)
    assert status["reason"] == "Invalid" and status["details"]["name"] == name
    prefix = f'{kind} "{name}" is invalid: '
    assert status["message"].startswith(prefix), status["message"]
    return status["message"][len(prefix):], status["details"]["causes"]


def refused(call, *args, **kwargs) -> ApiException:
    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("name", ["7th-run", "team.docs.assistant", "a" * 120, "a" * 253])
def test_custom_resource_names_are_dns_subdomains(custom, name):
    assert custom.create_namespaced_custom_object(G, V, NS, P, gadget(name))["metadata"]["name"] == name


@pytest.mark.parametrize("name, message", [
    ("Upper", f'metadata.name: Invalid value: "Upper": {SUBDOMAIN}'),
    ("a" * 254, f'metadata.name: Invalid value: "{"a" * 254}": must be no more than 253 characters'),
    ("under_score", f'metadata.name: Invalid value: "under_score": {SUBDOMAIN}'),
])
def test_invalid_custom_resource_names_are_refused(custom, name, message):
    error = refused(custom.create_namespaced_custom_object, G, V, NS, P, gadget(name))
    text, causes = invalid(error, f"Gadget.{G}", name)
    assert text == message
    assert causes == [{"reason": "FieldValueInvalid", "field": "metadata.name", "message": message.split(": ", 1)[1]}]


def test_built_in_names_follow_each_kinds_rule(core):
    error = refused(core.create_namespaced_service, NS, {"metadata": {"name": "web.api"},
                                                         "spec": {"ports": [{"port": 80}]}})
    assert invalid(error, "Service", "web.api")[0] == f'metadata.name: Invalid value: "web.api": {DNS1035}'
    error = refused(core.create_namespaced_service, NS, {"metadata": {"name": "x" * 64},
                                                         "spec": {"ports": [{"port": 80}]}})
    assert invalid(error, "Service", "x" * 64)[0] == \
        f'metadata.name: Invalid value: "{"x" * 64}": must be no more than 63 characters'
    error = refused(core.create_namespace, {"metadata": {"name": "team.docs"}})
    assert invalid(error, "Namespace", "team.docs")[0] == 'metadata.name: Invalid value: "team.docs": must not contain dots'
    assert core.create_namespaced_config_map(NS, {"metadata": {"name": "team.docs.config"}}).metadata.name == \
        "team.docs.config"


def test_generate_name_is_validated_as_a_prefix(custom):
    created = custom.create_namespaced_custom_object(G, V, NS, P, {**gadget(""), "metadata": {"generateName": "gen-"}})
    assert created["metadata"]["name"].startswith("gen-") and len(created["metadata"]["name"]) == 9
    error = refused(custom.create_namespaced_custom_object, G, V, NS, P,
                    {**gadget(""), "metadata": {"generateName": "Gen-"}})
    assert f'metadata.generateName: Invalid value: "Gen-": {SUBDOMAIN}' in status_of(error)["message"]


def test_a_generated_name_that_is_taken_is_generated_again(custom, monkeypatch):
    """kube-apiserver >= 1.30 (RetryGenerateName) retries a taken generated name instead of answering 409, with
    apimachinery's alphabet (without vowels or look-alikes)."""
    from kubeforge.dev.apiserver import store

    suffixes = iter(["bcdfg", "bcdfg", "bcdfg", "hjk27"])
    monkeypatch.setattr(store, "generated_suffix", lambda: next(suffixes))
    names = [custom.create_namespaced_custom_object(G, V, NS, P, {**gadget(""), "metadata": {"generateName": "again-"}})
             ["metadata"]["name"] for _ in range(2)]
    assert names == ["again-bcdfg", "again-hjk27"]
    monkeypatch.undo()
    assert set(store.generated_suffix()) <= set("bcdfghjklmnpqrstvwxz2456789")


def test_a_label_value_over_63_characters_is_refused_on_create(custom):
    body = gadget("long-label")
    body["metadata"]["labels"] = {"kubeforge.dev/name": LONG_VALUE}
    text, causes = invalid(refused(custom.create_namespaced_custom_object, G, V, NS, P, body), f"Gadget.{G}",
                           "long-label")
    assert text == f'metadata.labels: Invalid value: "{LONG_VALUE}": must be no more than 63 characters'
    assert causes == [{"reason": "FieldValueInvalid", "field": "metadata.labels",
                       "message": f'Invalid value: "{LONG_VALUE}": must be no more than 63 characters'}]


def test_label_values_and_keys_are_checked_on_update_patch_and_apply(server, custom, kubectl):
    obj = custom.create_namespaced_custom_object(G, V, NS, P, gadget("labelled", size=2))
    obj["metadata"]["labels"] = {"ok": "-starts-with-dash"}
    error = refused(custom.replace_namespaced_custom_object, G, V, NS, P, "labelled", obj)
    assert invalid(error, f"Gadget.{G}", "labelled")[0] == \
        f'metadata.labels: Invalid value: "-starts-with-dash": {LABEL_VALUE}'
    error = refused(custom.patch_namespaced_custom_object, G, V, NS, P, "labelled",
                    {"metadata": {"labels": {"bad key": "v"}}})
    assert invalid(error, f"Gadget.{G}", "labelled")[0] == f'metadata.labels: Invalid value: "bad key": {NAME_PART}'
    error = refused(custom.patch_namespaced_custom_object, G, V, NS, P, "labelled",
                    {"metadata": {"labels": {("p" * 254) + "/name": "v"}}})
    assert "prefix part must be no more than 253 characters" in status_of(error)["message"]
    error = refused(custom.patch_namespaced_custom_object, G, V, NS, P, "labelled",
                    {"metadata": {"labels": {"a/b/c": "v"}}})
    assert "a qualified name must consist of alphanumeric characters" in status_of(error)["message"]
    applied = gadget("labelled", size=2)
    applied["metadata"]["labels"] = {"app": LONG_VALUE}
    response = raw(server, "PATCH", f"{BASE}/labelled", yaml.safe_dump(applied), "application/apply-patch+yaml",
                   fieldManager="tester")
    assert response.status_code == 422
    assert response.json()["message"].endswith(f'"{LONG_VALUE}": must be no more than 63 characters')
    result = kubectl("label", "gadget", "labelled", f"app={LONG_VALUE}", check=False)
    assert result.returncode != 0 and "must be no more than 63 characters" in result.stderr
    result = kubectl("label", "gadget", "labelled", "kubeforge.dev/name=" + "v" * 63)
    assert custom.get_namespaced_custom_object(G, V, NS, P, "labelled")["metadata"]["labels"] == \
        {"kubeforge.dev/name": "v" * 63}


def test_annotation_keys_and_total_size(custom, core):
    body = gadget("annotated")
    body["metadata"]["annotations"] = {"Example.COM/Mixed-Case": "ok", "x": "y" * 1000}  # case does not matter
    custom.create_namespaced_custom_object(G, V, NS, P, body)
    error = refused(custom.patch_namespaced_custom_object, G, V, NS, P, "annotated",
                    {"metadata": {"annotations": {"no spaces": "v"}}})
    assert invalid(error, f"Gadget.{G}", "annotated")[0] == \
        f'metadata.annotations: Invalid value: "no spaces": {NAME_PART}'
    big = {"metadata": {"name": "big", "annotations": {"a": "x" * (256 * 1024)}}}
    text, causes = invalid(refused(core.create_namespaced_config_map, NS, big), "ConfigMap", "big")
    assert text == "metadata.annotations: Too long: may not be more than 262144 bytes"
    assert causes[0]["reason"] == "FieldValueTooLong"
    big["metadata"]["annotations"]["a"] = "x" * (256 * 1024 - 1)  # key + value exactly at the limit
    core.create_namespaced_config_map(NS, big)


def test_several_metadata_errors_are_listed_together(custom):
    body = gadget("Several")
    body["metadata"]["labels"] = {"app": LONG_VALUE}
    text, causes = invalid(refused(custom.create_namespaced_custom_object, G, V, NS, P, body), f"Gadget.{G}", "Several")
    assert text == (f'[metadata.name: Invalid value: "Several": {SUBDOMAIN}, '
                    f'metadata.labels: Invalid value: "{LONG_VALUE}": must be no more than 63 characters]')
    assert [c["field"] for c in causes] == ["metadata.name", "metadata.labels"]
