"""The corpus shipped in examples/corpus/ is what examples/rag-index.yaml indexes once the sandbox has seeded it:
the example's source selects every document there (and nothing else), each of them parses into text and chunks
within the example's size, and the committed PDF is what its script writes."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml

from kubeforge.api.vectorindex import VectorIndexSpec
from kubeforge.storage.layout import parse_s3_uri
from kubeforge_workloads.index.chunking import DocumentChunker, token_counter
from kubeforge_workloads.index.parse import Document, parse_object
from kubeforge_workloads.index.sources import FORMATS, selected
from tests.conftest import REPO_ROOT

CORPUS = REPO_ROOT / "examples" / "corpus"
EXAMPLE = VectorIndexSpec.model_validate(
    yaml.safe_load((REPO_ROOT / "examples" / "rag-index.yaml").read_text())["spec"])
# Where `kubeforge dev up` puts the corpus (python -m kubeforge_workloads.seed --corpus examples/corpus)
SEEDED_URI = "s3://kubeforge/seed/corpus/"


def corpus_files() -> dict[str, Path]:
    return {path.relative_to(CORPUS).as_posix(): path for path in sorted(CORPUS.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts}


def documents() -> dict[str, Path]:
    """What the seed uploads: the corpus files with an indexable extension."""
    return {relative: path for relative, path in corpus_files().items() if path.suffix in FORMATS}


def test_the_example_indexes_exactly_the_seeded_corpus():
    from kubeforge.dev.sandbox import BUCKET

    assert EXAMPLE.source.uri == SEEDED_URI and parse_s3_uri(SEEDED_URI)[0] == BUCKET
    chosen = {relative for relative in documents()
              if selected(relative, EXAMPLE.source.include, EXAMPLE.source.exclude)}
    assert chosen == set(documents())
    assert {FORMATS[Path(relative).suffix] for relative in chosen} >= {"md", "html", "txt", "pdf"}
    assert len(chosen) >= 36  # several dozen
    assert set(corpus_files()) - set(documents()) == {"make_pdf.py"}
    assert sum(path.stat().st_size for path in corpus_files().values()) < 256 * 1024


@pytest.fixture(scope="module")
def chunker():
    from kubeforge_workloads.index.embedding import load_tokenizer, model_path

    chunking = EXAMPLE.chunking
    count_tokens = token_counter(load_tokenizer(model_path(EXAMPLE.embedding.model)))
    return count_tokens, DocumentChunker(count_tokens, chunking.strategy.value, chunking.size, chunking.overlap)


@pytest.mark.parametrize("relative", sorted(documents()))
def test_every_corpus_document_parses_into_chunks_within_the_example_size(relative, chunker):
    count_tokens, document_chunker = chunker
    data = documents()[relative].read_bytes()
    (parsed,) = parse_object(relative, FORMATS[Path(relative).suffix], data)
    assert isinstance(parsed, Document), parsed
    chunks = document_chunker.chunk(parsed)
    assert chunks and all(count_tokens(chunk.text) <= EXAMPLE.chunking.size for chunk in chunks), relative
    assert not any(markup in parsed.text for markup in ("<p>", "<h1>", "font-family", "**", "`"))  # text only


def test_the_committed_pdf_is_what_its_script_writes():
    script = runpy.run_path(str(CORPUS / "make_pdf.py"), run_name="corpus_pdf")  # run_path leaves no bytecode
    assert (CORPUS / "operations-handbook.pdf").read_bytes() == script["handbook"]()
    (parsed,) = parse_object("operations-handbook.pdf", "pdf", script["handbook"]())
    assert parsed.metadata["pages"] == len(script["PAGES"]) == 3 and "exponential backoff" in parsed.text
