"""VectorIndex build pieces: source selection, parsing with real parsers, chunking in model tokens, content hashes,
the incremental diff, version retention, and the engine's recall and filters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubeforge_workloads.index.chunking import DocumentChunker, sentence_spans, token_counter
from kubeforge_workloads.index.parse import Document, Skipped, parse_object
from kubeforge_workloads.index.sources import selected
from kubeforge_workloads.index.versions import diff_documents, versions_to_delete
from tests.unit.workloads.minimal_pdf import minimal_pdf


@pytest.fixture(scope="module")
def count_tokens():
    from transformers import AutoTokenizer

    from kubeforge_workloads.index.embedding import model_path

    return token_counter(AutoTokenizer.from_pretrained(model_path("all-MiniLM-L6-v2")))


# --- sources -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("relative,include,exclude,expected", [
    ("a.md", ["**"], [], True),
    ("docs/deep/a.md", ["**/*.md"], [], True),
    ("a.md", ["**/*.md"], [], True),  # **/ may match no folder at all
    ("docs/a.md", ["*.md"], [], False),  # * stays within one folder
    ("docs/a.txt", ["**/*.md"], [], False),
    ("drafts/a.md", ["**"], ["drafts/**"], False),
    ("docs/drafts/a.md", ["**"], ["drafts/**"], True),
    ("a1.md", ["a[0-9].md"], [], True),
    ("ab.md", ["a[!0-9].md"], [], True),
    ("a.md.bak", ["**/*.md"], [], False),
])
def test_include_and_exclude_globs(relative, include, exclude, expected):
    assert selected(relative, include, exclude) is expected


# --- parsing -----------------------------------------------------------------------------------------------------

def _one(relative: str, fmt: str, data: bytes):
    (parsed,) = parse_object(relative, fmt, data)
    return parsed


def test_markdown_loses_its_markup_keeps_code_and_anchors_every_heading():
    source = (b"# Guide\n\nSome **bold** and [a link](http://example.com) and `code`.\n\n## Install\n\n"
              b"- one\n- two\n\n```sh\npip install kubeforge\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
              b"# Other\n\nText.\n")
    document = _one("g.md", "md", source)
    assert "**" not in document.text and "](" not in document.text and "#" not in document.text
    assert "Some bold and a link and code." in document.text and "pip install kubeforge" in document.text
    assert "1 | 2" in document.text
    assert document.metadata == {"source": "g.md", "format": "md", "title": "Guide"}
    headers = [(document.text[offset:offset + 7], meta.get("headers")) for offset, meta in document.anchors]
    assert headers == [("Guide\n\n", "Guide"), ("Install", "Guide > Install"), ("Other\n\n", "Other")]


def test_html_text_without_scripts_or_styles_and_its_title():
    document = _one("p.html", "html", b"<html><head><title>T</title><style>.x{}</style></head><body><h1>Head</h1>"
                                      b"<p>Body &amp; more</p><script>alert(1)</script></body></html>")
    assert document.text == "Head\nBody & more"
    assert document.metadata["title"] == "T"


def test_pdf_text_per_page_with_page_anchors_and_title():
    document = _one("m.pdf", "pdf", minimal_pdf(["First page.", "Second (page)."], title="Manual"))
    assert document.text == "First page.\n\nSecond (page)."
    assert document.anchors == [(0, {"page": 1}), (13, {"page": 2})]
    assert document.metadata == {"source": "m.pdf", "format": "pdf", "pages": 2, "title": "Manual"}


def test_jsonl_rows_become_documents_with_ids_text_and_chosen_metadata():
    rows = [{"id": "a", "body": "Alpha text", "team": "ml", "secret": "x"}, {"body": "Beta text"},
            {"id": "c", "title": "no body"}, "not an object"]
    data = "\n".join(json.dumps(r) for r in rows).encode() + b"\n{broken\n"
    parsed = parse_object("f.jsonl", "jsonl", data, text_field="body", id_field="id", metadata_fields=("team",))
    assert [(type(p).__name__, p.document_id) for p in parsed] == [
        ("Document", "f.jsonl#a"), ("Document", "f.jsonl#L2"), ("Skipped", "f.jsonl#c"), ("Skipped", "f.jsonl#L4"),
        ("Skipped", "f.jsonl#L5")]
    assert parsed[0].metadata == {"source": "f.jsonl", "format": "jsonl", "team": "ml"}
    assert [p.cause for p in parsed[2:]] == ["missingTextField", "invalidJson", "invalidJson"]
    assert "field 'body'" in parsed[2].message and "line 3" in parsed[2].message


@pytest.mark.parametrize("relative,fmt,data,cause", [
    ("e.txt", "txt", b"", "empty"),
    ("w.md", "md", b"  \n\n ", "empty"),
    ("l1.txt", "txt", "caf\u00e9".encode("latin-1"), "invalidUtf8"),
    ("bin.txt", "txt", b"ab\x00\x00cd", "binary"),
    ("x.pdf", "pdf", b"%PDF-1.4\nnot really", "unparseable"),
    ("blank.pdf", "pdf", minimal_pdf([""]), "noText"),
    ("code.exe", None, b"MZ\x90\x00", "unsupportedFormat"),
    ("only-tags.html", "html", b"<html><script>x()</script></html>", "noText"),
])
def test_bad_documents_are_skipped_with_their_cause_and_name(relative, fmt, data, cause):
    skipped = _one(relative, fmt, data)
    assert isinstance(skipped, Skipped) and skipped.cause == cause
    assert skipped.message.startswith(relative)


def test_content_hash_follows_the_bytes_and_jsonl_rows_ignore_their_position():
    one = _one("a.txt", "txt", b"same text")
    assert one.content_hash == _one("b.txt", "txt", b"same text").content_hash
    assert one.content_hash != _one("a.txt", "txt", b"same text!").content_hash
    first = parse_object("f.jsonl", "jsonl", b'{"id": 1, "text": "x"}\n{"id": 2, "text": "y"}\n', id_field="id")
    moved = parse_object("f.jsonl", "jsonl", b'{"id": 2, "text": "y"}\n{"id": 1, "text": "x"}\n', id_field="id")
    assert {d.document_id: d.content_hash for d in first} == {d.document_id: d.content_hash for d in moved}


# --- chunking ----------------------------------------------------------------------------------------------------

LONG = " ".join(f"Sentence number {i} explains how Kubeforge resumes a training run after a failure." for i in
                range(40))


@pytest.mark.parametrize("strategy", ["tokens", "sentences", "markdown-headers"])
def test_chunks_fit_the_size_in_model_tokens_and_cover_the_text(count_tokens, strategy):
    document = Document("d.txt", LONG, "h", {"source": "d.txt"})
    chunks = DocumentChunker(count_tokens, strategy, 48, 8).chunk(document)
    assert len(chunks) > 5
    assert max(count_tokens(c.text) for c in chunks) <= 48
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(f"Sentence number {i} " in " ".join(c.text for c in chunks) for i in range(40))
    assert all(c.metadata == {"source": "d.txt"} for c in chunks)


def test_consecutive_chunks_overlap_and_without_overlap_they_do_not(count_tokens):
    document = Document("d.txt", LONG, "h")
    overlapping = DocumentChunker(count_tokens, "sentences", 48, 20).chunk(document)
    assert all(a.text.split(". ")[-1] in b.text for a, b in zip(overlapping, overlapping[1:]))
    disjoint = DocumentChunker(count_tokens, "sentences", 48, 0).chunk(document)
    assert sum(len(c.text) for c in disjoint) < sum(len(c.text) for c in overlapping)
    assert all(a.text.split(". ")[-1] not in b.text for a, b in zip(disjoint, disjoint[1:]))
    token_chunks = DocumentChunker(count_tokens, "tokens", 48, 16).chunk(document)
    assert any(a.text[-30:] in b.text for a, b in zip(token_chunks, token_chunks[1:]))


def test_sentences_strategy_keeps_whole_sentences(count_tokens):
    chunks = DocumentChunker(count_tokens, "sentences", 48, 0).chunk(Document("d.txt", LONG, "h"))
    assert all(c.text.startswith("Sentence number") and c.text.endswith("failure.") for c in chunks)
    assert sentence_spans("One. Two!  Three?\n\nFour") == [(0, 4), (5, 9), (11, 17), (19, 23)]


def test_markdown_headers_never_cross_a_heading_and_carry_the_heading_path(count_tokens):
    document = _one("g.md", "md", b"# Top\n\nIntro line.\n\n## Install\n\nRun pip.\n\n## Use\n\nApply it.\n")
    chunks = DocumentChunker(count_tokens, "markdown-headers", 200, 10).chunk(document)
    assert [(c.text, c.metadata["headers"]) for c in chunks] == [
        ("Top\n\nIntro line.", "Top"), ("Install\n\nRun pip.", "Top > Install"), ("Use\n\nApply it.", "Top > Use")]
    (whole,) = DocumentChunker(count_tokens, "tokens", 200, 10).chunk(document)
    assert whole.metadata["headers"] == "Top"  # tokens chunks across headings; metadata of where it starts


def test_pdf_page_metadata_follows_the_chunk(count_tokens):
    document = _one("m.pdf", "pdf", minimal_pdf(["About pages.", "About manifests."]))
    chunks = DocumentChunker(count_tokens, "markdown-headers", 100, 0).chunk(document)
    assert [(c.text, c.metadata["page"]) for c in chunks] == [("About pages.", 1), ("About manifests.", 2)]


# --- incremental diff and retention ------------------------------------------------------------------------------

def test_diff_reuses_unchanged_documents_and_names_the_rest():
    plan = diff_documents({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "20", "d": "4"})
    assert (plan.unchanged, plan.changed, plan.added, plan.deleted) == (["a"], ["b"], ["d"], ["c"])
    assert plan.to_embed == {"b", "d"}
    assert diff_documents({}, {"a": "1"}).to_embed == {"a"}


@pytest.mark.parametrize("present,committed,current,keep,doomed", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 4, 2, [1, 2]),
    ([1, 2, 3, 4], [1, 2, 3, 4], 4, 1, [1, 2, 3]),
    ([3, 4, 5], [3, 5], 5, 3, [4]),  # 4 has no manifest: an attempt died writing it
    ([1, 2, 6], [1, 2], 2, 1, [1]),  # 6 is newer than the current version: another build's, left alone
    ([1, 2], [1, 2], 2, 0, [1]),  # the current version stays whatever keep says
])
def test_retention_keeps_the_newest_versions_and_never_the_current(present, committed, current, keep, doomed):
    assert versions_to_delete(present, committed, current, keep) == doomed


# --- engine ------------------------------------------------------------------------------------------------------

def _clustered(n: int = 2000, dims: int = 32, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dims))
    return (centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dims))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_is_exact_and_hnsw_recall_is_measured_against_it(metric):
    from kubeforge_workloads.index import engine

    stored = engine.prepare(_clustered(), metric)
    flat = engine.build(stored, metric, "flat")
    assert engine.recall_at_k(flat, stored, metric, 10, 100) == (1.0, 100)
    good = engine.build(stored, metric, "hnsw", m=16, ef_construction=100)
    recall, _ = engine.recall_at_k(good, stored, metric, 10, 100, ef_search=64)
    assert recall >= 0.95
    poor, _ = engine.recall_at_k(engine.build(stored, metric, "hnsw", m=4, ef_construction=8), stored, metric, 10,
                                 100, ef_search=1)
    assert poor < recall  # the measurement sees a worse graph


def test_scores_are_higher_for_closer_vectors_in_every_metric():
    from kubeforge_workloads.index import engine

    stored = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    for metric in ("cosine", "ip", "l2"):
        prepared = engine.prepare(stored, metric)
        scores, ids = engine.search(engine.build(prepared, metric, "flat"), np.array([1, 0], np.float32), 3, metric)
        assert ids[0].tolist() == [0, 1, 2] and scores[0][0] >= scores[0][1] >= scores[0][2], metric


def test_duplicate_vectors_are_not_counted_as_misses():
    from kubeforge_workloads.index import engine

    stored = engine.prepare(np.repeat(_clustered(50, 8), 4, axis=0), "cosine")
    index = engine.build(stored, "cosine", "hnsw", m=16, ef_construction=100)
    assert engine.recall_at_k(index, stored, "cosine", 10, 50, ef_search=64)[0] >= 0.99


def test_filtered_search_returns_only_allowed_rows_exactly():
    from kubeforge_workloads.index import engine

    stored = engine.prepare(_clustered(), "cosine")
    index = engine.build(stored, "cosine", "hnsw", m=4, ef_construction=8)
    allowed = np.arange(1, 2000, 97)
    scores, ids = engine.search(index, stored[0], 5, "cosine", 1, allowed, stored[allowed])
    exact = np.argsort(-(stored[allowed] @ stored[0]))[:5]
    assert ids[0].tolist() == allowed[exact].tolist()
    assert engine.search(index, stored[0], 5, "cosine", 1, np.array([], np.int64), stored[:0])[1].shape == (1, 0)


# --- partial builds ----------------------------------------------------------------------------------------------

def _embedded(document_id: str, digest: str, ordinals: list[int], total: int) -> dict:
    return {"document_id": [document_id] * len(ordinals), "ordinal": ordinals,
            "chunks_in_document": [total] * len(ordinals), "text": [f"{document_id} {o}" for o in ordinals],
            "metadata": ["{}"] * len(ordinals), "document_hash": [digest] * len(ordinals),
            "vector": np.full((len(ordinals), 4), float(total), dtype=np.float32)}


def test_a_retry_reuses_saved_chunks_of_complete_unchanged_documents_only(object_store):
    from kubeforge.storage.layout import ResourcePrefix
    from kubeforge_workloads.index.partial import PartialChunks, embedded_table, load_partial
    from tests.unit.workloads.conftest import BUCKET

    prefix = ResourcePrefix(BUCKET, "ns/VectorIndex/docs")
    now = [0.0]
    saver = PartialChunks(object_store, prefix, 3, attempt=1, interval=10, clock=lambda: now[0])
    saver.add(embedded_table(_embedded("a.md", "ha", [0, 1], 2)))
    saver.add(embedded_table(_embedded("b.md", "hb", [0], 3)))  # 1 of 3 chunks embedded so far
    assert list(object_store.list(BUCKET, prefix.index_partial_key(3))) == []  # not yet due
    now[0] = 11
    saver.add(embedded_table(_embedded("c.md", "hc", [0], 1)))
    assert len(list(object_store.list(BUCKET, prefix.index_partial_key(3)))) == 1
    assert saver.pending[0].column("document_id").to_pylist() == ["b.md"]  # waits for its other chunks

    reused = load_partial(object_store, prefix, 3, {"a.md": "ha", "b.md": "hb", "c.md": "changed"})
    assert sorted(zip(reused.column("document_id").to_pylist(), reused.column("ordinal").to_pylist())) == \
        [("a.md", 0), ("a.md", 1)]
    assert load_partial(object_store, prefix, 4, {"a.md": "ha"}) is None  # another version's build shares nothing
