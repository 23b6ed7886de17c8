"""`python -m kubeforge_workloads.seed --bucket B`: upload the tiny Llama, datasets and docs (idempotent)."""

import argparse
import tempfile
from pathlib import Path

import boto3

from kubeforge_workloads.common.storage import upload_tree
from kubeforge_workloads.seed.build import build_tiny_llama, write_datasets
from kubeforge_workloads.seed.docs import DOCS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="seed")
    args = parser.parse_args()
    s3 = boto3.client("s3")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_llama(root / "tiny-llama")
        print(f"model: {upload_tree(s3, model, args.bucket, f'{args.prefix}/models/tiny-llama/')} files")
        data = root / "data"
        write_datasets(data)
        upload_tree(s3, data, args.bucket, f"{args.prefix}/datasets/kubeforge-docs-qa/")
        docs = root / "docs"
        docs.mkdir()
        for name, text in DOCS.items():
            (docs / name).write_text(text + "\n")
        upload_tree(s3, docs, args.bucket, f"{args.prefix}/docs/")
    print(f"seeded s3://{args.bucket}/{args.prefix}/")


main()
