"""`python -m kubeforge_workloads.seed --bucket B`: upload the tiny Llama, datasets and docs (idempotent)."""

import argparse
import tempfile
from pathlib import Path

import boto3

from kubeforge_workloads.seed.build import build_tiny_llama, write_datasets
from kubeforge_workloads.seed.docs import DOCS


def upload_dir(s3, local: Path, bucket: str, prefix: str) -> int:
    count = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="seed")
    args = parser.parse_args()
    s3 = boto3.client("s3")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_llama(root / "tiny-llama")
        print(f"model: {upload_dir(s3, model, args.bucket, f'{args.prefix}/models/tiny-llama')} files")
        data = root / "data"
        write_datasets(data)
        upload_dir(s3, data, args.bucket, f"{args.prefix}/datasets/kubeforge-docs-qa")
        docs = root / "docs"
        docs.mkdir()
        for name, text in DOCS.items():
            (docs / name).write_text(text + "\n")
        upload_dir(s3, docs, args.bucket, f"{args.prefix}/docs")
    print(f"seeded s3://{args.bucket}/{args.prefix}/")


main()
