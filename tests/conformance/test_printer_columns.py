"""Printer columns (additionalPrinterColumns) evaluated as the real server evaluates them: any client-go
JSONPath (filters, slices, escaped dots; jsonpath-ng here), the first result only, cells typed as
apiextensions' cellForJSONValue types them; seen through `kubectl get -o wide`."""

from tests.conformance.conftest import finetune, gadget, raw

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "gadgets"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def cells(server, path: str) -> dict:
    table = raw(server, "GET", path, accept=TABLE).json()
    return dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"]))


def wide_row(kubectl, *args) -> dict:
    """`kubectl get -o wide` of one object, cell by column header (cells may hold single spaces)."""
    header, row = kubectl("get", *args, "-o", "wide").stdout.splitlines()[:2]
    starts = [header.index(name) for name in header.split()]
    return {header.split()[i]: row[start:(starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, start in enumerate(starts)}


def test_columns_beyond_simple_field_paths(server, custom, kubectl):
    body = gadget("cols", tags=["a", "b", "c"], locked=True, size=4)
    body["metadata"]["labels"] = {"example.com/team": "docs"}
    custom.create_namespaced_custom_object(G, V, NS, P, body)
    custom.patch_namespaced_custom_object_status(G, V, NS, P, "cols", {"status": {"conditions": [
        {"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"},
        {"type": "Healthy", "status": "False"}]}})
    row = cells(server, f"/apis/{G}/{V}/namespaces/{NS}/{P}/cols")
    assert row["Team"] == "docs"  # escaped dots in a label key
    assert row["Last"] == "c"  # a slice
    assert row["Tags"] == '["a","b","c"]'  # a list in a string column: compact JSON, as client-go prints it
    assert row["Size"] == 4 and row["Locked"] is True
    assert row["Failing"] == "Synced"  # several matches: the first only
    assert row["Ready"] == "True"
    shown = wide_row(kubectl, "gadget", "cols")
    assert (shown["TEAM"], shown["LAST"], shown["FAILING"], shown["READY"]) == ("docs", "c", "Synced", "True")


def test_cells_of_the_wrong_type_are_empty(server, custom):
    custom.create_namespaced_custom_object(G, V, NS, P, gadget("cols-empty", tags=["x"]))
    row = cells(server, f"/apis/{G}/{V}/namespaces/{NS}/{P}/cols-empty")
    assert row["Team"] is None and row["Locked"] is None and row["Failing"] is None and row["Ready"] is None
    assert row["Last"] == "x" and row["Tags"] == '["x"]'


def test_kubectl_shows_our_crds_columns_with_a_filter(kubectl, custom):
    custom.create_namespaced_custom_object("kubeforge.dev", "v1alpha1", NS, "finetunes", finetune("cols-ft"))
    custom.patch_namespaced_custom_object_status("kubeforge.dev", "v1alpha1", NS, "finetunes", "cols-ft", {"status": {
        "phase": "Running", "restarts": 2, "progress": {"summary": "12/69 steps"},
        "conditions": [{"type": "Progressing", "status": "True", "reason": "Training", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"},
                       {"type": "Ready", "status": "False", "reason": "Training", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    shown = {k: v for k, v in wide_row(kubectl, "ft", "cols-ft").items()
             if k in ("NAME", "PHASE", "PROGRESS", "RESTARTS", "READY", "REASON")}
    assert shown == {"NAME": "cols-ft", "PHASE": "Running", "PROGRESS": "12/69 steps", "RESTARTS": "2",
                     "READY": "False", "REASON": "Training"}  # READY, REASON: .status.conditions[?(@.type=="Ready")]
