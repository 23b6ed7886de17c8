"""Documents to chunks whose size is counted in the embedding model's own tokens.

tokens: semchunk splits at the most meaningful boundary (blank line, newline, sentence end, word) that keeps a
chunk within size, with the given overlap. sentences: whole sentences packed up to size, the next chunk repeating
the trailing sentences that fit in overlap. markdown-headers: every anchored section (a Markdown heading, a PDF
page) chunked on its own, so no chunk spans two sections. Every chunk carries the metadata of the anchor it
starts in.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Callable

from kubeforge_workloads.index.parse import Document

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n\s*\n")


@dataclass
class Chunk:
    ordinal: int
    text: str
    metadata: dict


def token_counter(tokenizer) -> Callable[[str], int]:
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


class DocumentChunker:
    def __init__(self, count_tokens: Callable[[str], int], strategy: str, size: int, overlap: int):
        self.count, self.strategy, self.size, self.overlap = count_tokens, strategy, size, overlap

    def chunk(self, document: Document) -> list[Chunk]:
        if self.strategy == "tokens":
            spans = self._semchunk(document.text, 0)
        elif self.strategy == "sentences":
            spans = self._sentences(document.text)
        elif self.strategy == "markdown-headers":
            bounds = [offset for offset, _ in document.anchors] + [len(document.text)]
            spans = [span for start, end in zip(bounds, bounds[1:])
                     for span in self._semchunk(document.text[start:end], start)]
        else:
            raise ValueError(f"unknown chunking strategy {self.strategy!r}")
        offsets = [offset for offset, _ in document.anchors]
        chunks = []
        for start, end in spans:
            text = document.text[start:end].strip()
            if not text:
                continue
            anchor = document.anchors[max(bisect.bisect_right(offsets, start) - 1, 0)][1]
            chunks.append(Chunk(len(chunks), text, {**document.metadata, **anchor}))
        return chunks

    def _semchunk(self, text: str, shift: int) -> list[tuple[int, int]]:
        import semchunk

        if not text.strip():
            return []
        _, offsets = semchunk.chunk(text, self.size, self.count, offsets=True, overlap=self.overlap or None)
        return [(start + shift, end + shift) for start, end in offsets]

    def _sentences(self, text: str) -> list[tuple[int, int]]:
        pieces = []  # (start, end, tokens): sentences, the longer ones already split to fit
        for start, end in sentence_spans(text):
            tokens = self.count(text[start:end])
            if tokens <= self.size:
                pieces.append((start, end, tokens))
            else:
                pieces.extend((s, e, self.count(text[s:e])) for s, e in self._semchunk(text[start:end], start))
        spans, first = [], 0
        while first < len(pieces):
            last, total = first, pieces[first][2]
            while last + 1 < len(pieces) and total + pieces[last + 1][2] <= self.size:
                last += 1
                total += pieces[last][2]
            spans.append((pieces[first][0], pieces[last][1]))
            if last + 1 >= len(pieces):
                break
            # The next chunk repeats the trailing whole sentences that fit in overlap, and always moves forward.
            following, carried = last + 1, 0
            while following - 1 > first and carried + pieces[following - 1][2] <= self.overlap:
                following -= 1
                carried += pieces[following][2]
            first = following
        return spans


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: ends at . ! ? (with closing quotes or brackets) before whitespace, or at a
    blank line; leading whitespace is not part of a sentence."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end() if match.group().strip() else match.start()
        if text[start:end].strip():
            spans.append(_trimmed(text, start, end))
        start = match.end()
    if text[start:].strip():
        spans.append(_trimmed(text, start, len(text)))
    return spans


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
