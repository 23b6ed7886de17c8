import argparse
import logging

from kubeforge.dev.kuberay.controller import run

parser = argparse.ArgumentParser(description="Local KubeRay: run RayJobs on a local Ray head")
parser.add_argument("--kubeconfig", required=True)
parser.add_argument("--ray-address", required=True, help="Ray dashboard / job submission address")
parser.add_argument("--interval", type=float, default=1.0)
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
run(args.kubeconfig, args.ray_address, args.interval)
