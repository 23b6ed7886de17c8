"""Local KubeRay: runs ray.io/v1 RayJobs and RayServices on a local Ray head and writes KubeRay-shaped status.

    python -m kubeforge.dev.kuberay --kubeconfig PATH --ray-address http://127.0.0.1:8265 [--serve-port 8000]
                                    [--ray-token-file PATH]
    python -m kubeforge.dev.kuberay --kubeconfig PATH --status-only     # benchmarks: no Ray, RayJobs reported Running
"""
import argparse
import logging

from kubeforge.dev.kuberay.controller import run

parser = argparse.ArgumentParser(description="Local KubeRay: run RayJobs/RayServices on a local Ray head")
parser.add_argument("--kubeconfig", required=True)
parser.add_argument("--ray-address", help="Ray dashboard / job submission address (required unless --status-only)")
parser.add_argument("--serve-port", type=int, default=8000, help="port of the local Serve HTTP proxy")
parser.add_argument("--ray-token-file", default=None,
                    help="Ray auth token file (default: $RAY_AUTH_TOKEN_PATH, else the token of a head started by "
                         "kubeforge.dev.ray_head with this address)")
parser.add_argument("--interval", type=float, default=1.0)
parser.add_argument("--chaos-dir", default=None,
                    help="where chaos stall/oom files live (default: `chaos` beside the kubeconfig)")
parser.add_argument("--status-only", action="store_true",
                    help="for benchmarks of the operator only: run no Ray job, report every valid RayJob Running "
                         "(jobStatus RUNNING) until something else writes its end; RayServices are ignored")
args = parser.parse_args()
if not args.ray_address and not args.status_only:
    parser.error("--ray-address is required (the local Ray head's dashboard URL), unless --status-only")
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
run(args.kubeconfig, args.ray_address, args.interval, serve_port=args.serve_port, token_file=args.ray_token_file,
    chaos_dir=args.chaos_dir, status_only=args.status_only)
