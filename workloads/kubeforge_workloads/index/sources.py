"""Which objects under the source prefix are documents: include/exclude globs, formats by extension."""

from __future__ import annotations

import functools
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Optional

from kubeforge.storage.layout import parse_s3_uri

FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
           ".pdf": "pdf", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class SourceObject:
    key: str
    """Full object key in the source bucket."""
    relative: str
    """Key relative to the source prefix: the document id of a file (rows of a .jsonl file extend it)."""
    etag: str
    size: int

    @property
    def format(self) -> str | None:
        return FORMATS.get(posixpath.splitext(self.relative)[1].lower())


@functools.lru_cache(maxsize=256)
def glob_pattern(glob: str) -> re.Pattern:
    """A glob as a regular expression over relative keys: `**` crosses folders (and `**/` may match nothing),
    `*` and `?` stay within one folder, `[...]` is a character class."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and "]" in glob[i + 2:]:
            end = glob.index("]", i + 2)
            body = glob[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def selected(relative: str, include: list[str], exclude: list[str]) -> bool:
    return (any(glob_pattern(g).match(relative) for g in include)
            and not any(glob_pattern(g).match(relative) for g in exclude))


def list_sources(client, uri: str, include: list[str], exclude: list[str],
                 seen: Optional[Callable[[SourceObject], None]] = None) -> list[SourceObject]:
    """The objects under uri that include selects and exclude does not, sorted by relative key; `seen` is called
    with each as its listing page arrives (a sync can start work before the last page)."""
    bucket, key = parse_s3_uri(uri)
    root = key.rstrip("/") + "/" if key.strip("/") else ""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root):
        for item in page.get("Contents", []):
            relative = item["Key"][len(root):]
            if relative and not relative.endswith("/") and selected(relative, include, exclude):
                found.append(SourceObject(item["Key"], relative, item["ETag"].strip('"'), int(item["Size"])))
                if seen is not None:
                    seen(found[-1])
    return sorted(found, key=lambda o: o.relative)
