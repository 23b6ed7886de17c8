"""Raw objects to documents with real parsers: markdown-it-py, BeautifulSoup, pypdf, json. A document that
cannot be indexed becomes a Skipped record with its cause, never silently nothing.

A document is its plain text plus anchors: (offset, metadata) pairs saying which heading path (Markdown) or page
(PDF) the text from that offset on belongs to; chunks take the metadata of the anchor they start in.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Optional, Union

SKIP_EMPTY = "empty"
SKIP_INVALID_UTF8 = "invalidUtf8"
SKIP_BINARY = "binary"
SKIP_UNPARSEABLE = "unparseable"
SKIP_NO_TEXT = "noText"
SKIP_INVALID_JSON = "invalidJson"
SKIP_MISSING_TEXT_FIELD = "missingTextField"
SKIP_UNSUPPORTED_FORMAT = "unsupportedFormat"


@dataclass
class Document:
    document_id: str
    text: str
    content_hash: str
    metadata: dict = field(default_factory=dict)
    anchors: list[tuple[int, dict]] = field(default_factory=lambda: [(0, {})])


@dataclass
class Skipped:
    document_id: str
    cause: str
    message: str


Parsed = Union[Document, Skipped]


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_object(relative: str, fmt: Optional[str], data: bytes, text_field: str = "text",
                 id_field: Optional[str] = None, metadata_fields: tuple[str, ...] = ()) -> list[Parsed]:
    """The documents in one object (one for every format but jsonl, whose rows are documents)."""
    if fmt is None:
        return [Skipped(relative, SKIP_UNSUPPORTED_FORMAT,
                        f"{relative}: unsupported extension (index .txt, .md, .html, .pdf or .jsonl; narrow "
                        "source.include or add it to source.exclude)")]
    if not data.strip():
        return [Skipped(relative, SKIP_EMPTY, f"{relative}: the object is empty")]
    if fmt == "jsonl":
        return parse_jsonl(relative, data, text_field, id_field, metadata_fields)
    base = {"source": relative, "format": fmt}
    try:
        if fmt == "pdf":
            return [_finish(parse_pdf(relative, data, base), data)]
        text = _decode(relative, data)
        if isinstance(text, Skipped):
            return [text]
        document = {"txt": parse_text, "md": parse_markdown, "html": parse_html}[fmt](relative, text, base)
    except Exception as error:  # a parser's own failure on this document: skip it, keep indexing the rest
        return [Skipped(relative, SKIP_UNPARSEABLE, f"{relative}: {type(error).__name__}: {error}"[:300])]
    return [_finish(document, data)]


def _finish(parsed: Parsed, data: bytes) -> Parsed:
    if isinstance(parsed, Document):
        if not parsed.text.strip():
            return Skipped(parsed.document_id, SKIP_NO_TEXT, f"{parsed.document_id}: no text to index")
        parsed.content_hash = content_hash(data)
    return parsed


def _decode(relative: str, data: bytes) -> Union[str, Skipped]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return Skipped(relative, SKIP_INVALID_UTF8, f"{relative}: byte {error.start} is not valid UTF-8")
    if "\x00" in text:
        return Skipped(relative, SKIP_BINARY, f"{relative}: contains NUL bytes (a binary file?)")
    return text


def parse_text(relative: str, text: str, base: dict) -> Document:
    return Document(relative, text.strip(), "", dict(base))


def parse_markdown(relative: str, text: str, base: dict) -> Document:
    """Plain text of the Markdown (markup dropped, code kept), an anchor at every heading with its path."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks: list[str] = []
    anchors: list[tuple[int, dict]] = [(0, {})]
    path: list[tuple[int, str]] = []
    offset, level, row = 0, None, None

    def add(block: str) -> None:
        nonlocal offset
        block = block.strip()
        if block:
            if blocks:
                offset += 2
            blocks.append(block)
            offset += len(block)

    for token in tokens:
        if token.type == "heading_open":
            level = int(token.tag[1])
        elif token.type == "inline":
            content = _inline_text(token)
            if level is not None:
                path = [(lv, title) for lv, title in path if lv < level] + [(level, content.strip())]
                anchors.append((offset + (2 if blocks else 0), {"headers": " > ".join(t for _, t in path)}))
                add(content)
                level = None
            elif row is not None:
                row.append(content.strip())
            else:
                add(content)
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close":
            add(" | ".join(row or []))
            row = None
        elif token.type in ("fence", "code_block"):
            add(token.content)
        elif token.type == "html_block":
            add(_html_text(token.content))
    title = next((meta["headers"].split(" > ")[0] for _, meta in anchors[1:]), None)
    return Document(relative, "\n\n".join(blocks), "", {**base, **({"title": title} if title else {})},
                    _dedupe(anchors))


def _inline_text(token) -> str:
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "html_inline":
            continue
        elif child.type == "image":
            parts.append(child.content)  # the alt text
    return "".join(parts)


def _dedupe(anchors: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """Later anchors at the same offset replace earlier ones (a heading right at the start)."""
    out: list[tuple[int, dict]] = []
    for offset, meta in anchors:
        if out and out[-1][0] == offset:
            out[-1] = (offset, meta)
        else:
            out.append((offset, meta))
    return out


def _html_text(markup: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    return soup.get_text("\n", strip=True)


def parse_html(relative: str, text: str, base: dict) -> Document:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    metadata = {**base, **({"title": title} if title else {})}
    return Document(relative, _html_text(text), "", metadata)


def parse_pdf(relative: str, data: bytes, base: dict) -> Parsed:
    """Text of every page, an anchor per page (1-based page numbers)."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata or {}).get("/Title") if reader.metadata is not None else None
    except Exception as error:  # pypdf raises many types for broken files; all mean "cannot read this one"
        return Skipped(relative, SKIP_UNPARSEABLE, f"{relative}: not a readable PDF ({type(error).__name__}: "
                                                   f"{error})"[:300])
    blocks, anchors, offset = [], [], 0
    for number, page in enumerate(pages, start=1):
        page = page.strip()
        if not page:
            continue
        if blocks:
            offset += 2
        anchors.append((offset, {"page": number}))
        blocks.append(page)
        offset += len(page)
    if not blocks:
        return Skipped(relative, SKIP_NO_TEXT, f"{relative}: no extractable text in {len(pages)} page(s) "
                                               "(a scanned PDF? OCR is not supported)")
    metadata = {**base, "pages": len(pages), **({"title": str(title)} if title else {})}
    return Document(relative, "\n\n".join(blocks), "", metadata, anchors)


def parse_jsonl(relative: str, data: bytes, text_field: str, id_field: Optional[str],
                metadata_fields: tuple[str, ...]) -> list[Parsed]:
    """One document per row: id from id_field (else the line number), text from text_field, chosen metadata."""
    decoded = _decode(relative, data)
    if isinstance(decoded, Skipped):
        return [decoded]
    out: list[Parsed] = []
    for number, line in enumerate(decoded.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            out.append(Skipped(f"{relative}#L{number}", SKIP_INVALID_JSON, f"{relative} line {number}: {error}"))
            continue
        if not isinstance(row, dict):
            out.append(Skipped(f"{relative}#L{number}", SKIP_INVALID_JSON,
                               f"{relative} line {number}: a row must be a JSON object"))
            continue
        row_id = row.get(id_field) if id_field else None
        document_id = f"{relative}#{row_id}" if row_id not in (None, "") else f"{relative}#L{number}"
        text = row.get(text_field)
        if not isinstance(text, str) or not text.strip():
            out.append(Skipped(document_id, SKIP_MISSING_TEXT_FIELD,
                               f"{relative} line {number}: no text in field {text_field!r} "
                               "(set source.jsonl.textField to the field holding the text)"))
            continue
        chosen = {name: row[name] for name in metadata_fields if name in row}
        # The line number stays out of the hash: a row that only moved keeps its chunks and vectors.
        canonical = json.dumps({"text": text, "metadata": chosen}, sort_keys=True, default=str).encode()
        metadata = {"source": relative, "format": "jsonl", **chosen}
        out.append(Document(document_id, text.strip(), content_hash(canonical), metadata))
    if not out:
        out.append(Skipped(relative, SKIP_EMPTY, f"{relative}: no rows"))
    return out
