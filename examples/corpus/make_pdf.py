"""Writes operations-handbook.pdf, the corpus's PDF, byte for byte the same on every run (no PDF library needed:
a few objects of Helvetica text that pypdf extracts back). Run from anywhere: python examples/corpus/make_pdf.py

A test compares the committed PDF with this script's output, so edit the pages here and rerun it.
"""

from __future__ import annotations

from pathlib import Path

TITLE = "Kubeforge operations handbook"
PAGES = [
    "Node checks before training\n"
    "Before a training attempt starts, every worker runs a node check.\n"
    "The GPU must be visible, a small matrix multiplication must give the known answer,\n"
    "and a collective operation must reach every peer.\n"
    "A worker that fails the node check exits with its dedicated code, and the attempt\n"
    "is retried on other nodes with reason NodeCheckFailed.",
    "Retry backoff\n"
    "Failed attempts are retried after an exponential backoff: the first wait is\n"
    "failurePolicy.backoff.initialSeconds, each next wait doubles, and no wait is longer\n"
    "than failurePolicy.backoff.maxSeconds.\n"
    "After failurePolicy.maxRestarts retries the resource is Failed and stays so\n"
    "until its spec changes.",
    "On-call runbook\n"
    "When a FineTune is Retrying, read status.attempts for the reason of each attempt.\n"
    "OutOfMemory: lower the batch size or raise resources.memory.\n"
    "Hang: look for a dead peer in the Ray logs; the next attempt resumes automatically.\n"
    "UserError: fix the spec; the message names the field.",
]


def pdf(pages: list[str], title: str) -> bytes:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    # objects: 1 catalog, 2 page tree, 3 font, 4 document info, then a page object and its content stream per page
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
               f"<< /Title ({escape(title)}) >>".encode()]
    for i, text in enumerate(pages):
        lines = " ".join(f"({escape(line)}) Tj T*" for line in text.splitlines())
        stream = f"BT /F1 11 Tf 14 TL 56 740 Td {lines} ET".encode()
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {6 + 2 * i} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>".encode())
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 4 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def handbook() -> bytes:
    return pdf(PAGES, TITLE)


if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "operations-handbook.pdf"
    target.write_bytes(handbook())
    print(f"wrote {target}")
