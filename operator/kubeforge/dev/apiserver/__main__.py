import argparse
import asyncio
import logging
from pathlib import Path

from kubeforge.dev.apiserver.server import serve

parser = argparse.ArgumentParser(description="Kubeforge sandbox Kubernetes API emulator")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=17000)
parser.add_argument("--crds", type=Path, action="append", default=[], help="directory of CRD YAML (repeatable)")
parser.add_argument("--ready-file", type=Path)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
asyncio.run(serve(args.host, args.port, args.crds, args.ready_file))
