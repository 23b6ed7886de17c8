"""`python -m kubeforge_workloads.seed --bucket B [--corpus DIR]`: upload the tiny Llama, datasets and docs, the tiny
CLIP text encoder with its tokenizer and the shapes image-caption dataset of task: diffusion (tar shards under
<prefix>/datasets/shapes/, the same pairs as Parquet under <prefix>/datasets/shapes-parquet/), and the
documents of a corpus folder (the repo's examples/corpus, which examples/rag-index.yaml indexes) under
<prefix>/corpus/ and, with --reviews, the reviews table `kubeforge batch` runs over, with --eval the EvalRuns'
question sets (idempotent)."""

import argparse
import tempfile
from pathlib import Path

import boto3

from kubeforge_workloads.common.storage import upload_files, upload_tree
from kubeforge_workloads.index.sources import FORMATS
from kubeforge_workloads.seed.build import build_tiny_llama, write_datasets
from kubeforge_workloads.seed.docs import DOCS
from kubeforge_workloads.seed.shapes import build_tiny_clip, write_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="seed")
    parser.add_argument("--corpus", type=Path, help="a folder whose documents go under <prefix>/corpus/")
    parser.add_argument("--reviews", type=Path, help="a reviews table (examples/data/reviews.jsonl) for `kubeforge "
                        "batch`, uploaded as <prefix>/datasets/reviews/<its name>")
    parser.add_argument("--eval", type=Path, help="a folder of question sets (examples/data/eval) for EvalRuns, "
                        "uploaded under <prefix>/datasets/eval/")
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
        clip = build_tiny_clip(root / "tiny-clip")
        print(f"model: {upload_tree(s3, clip, args.bucket, f'{args.prefix}/models/tiny-clip/')} files")
        shards = upload_tree(s3, write_shapes(root / "shapes"), args.bucket, f"{args.prefix}/datasets/shapes/")
        upload_tree(s3, write_shapes(root / "shapes-parquet", parquet=True).parent, args.bucket,
                    f"{args.prefix}/datasets/shapes-parquet/")
        print(f"shapes: {shards} tar shards and one Parquet file")
    if args.corpus:
        # Documents only: the folder also holds the script that writes its PDF.
        documents = {f"{args.prefix}/corpus/{path.relative_to(args.corpus).as_posix()}": path
                     for path in sorted(args.corpus.rglob("*")) if path.is_file() and path.suffix in FORMATS}
        upload_files(s3, args.bucket, documents)
        print(f"corpus: {len(documents)} documents")
    if args.reviews:
        upload_files(s3, args.bucket, {f"{args.prefix}/datasets/reviews/{args.reviews.name}": args.reviews})
    if args.eval:
        upload_files(s3, args.bucket, {f"{args.prefix}/datasets/eval/{path.name}": path
                                       for path in sorted(args.eval.glob("*.jsonl"))})
    print(f"seeded s3://{args.bucket}/{args.prefix}/")


main()
