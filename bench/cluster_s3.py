"""The original's size on a cluster: one training run over two worker nodes, an epoch of 2,000 samples drawn from a
40,000-sample batch in an S3 bucket.

The cluster is tests/loopback.py's (a head with no CPUs and two worker nodes of 2 CPUs, each its own `ray start`, on
loopback, token auth) and the bucket is moto's S3 server on loopback; the job goes through the Job Submission API, as
`ray job submit` sends it. Two of a dataset's zips are uploaded: a training batch of 40,000 samples (the first) and
its test batch (the last), as `aws s3 cp` would.

    python bench/cluster_s3.py --data /work/scale/data-400000           # bench/scale.py's 400k dataset

Prints one JSON line and writes bench/out/cluster_s3.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "bench" / "out" / "cluster_s3.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a dataset in zips whose first batch is the one to draw from")
    ap.add_argument("--samples", type=int, default=2000, help="samples_per_epoch")
    args = ap.parse_args()
    from loopback import LoopbackCluster, free_port  # noqa: E402  (tests/, on the path above)

    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "fgbg-bench", "AWS_SECRET_ACCESS_KEY": "fgbg-bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    os.environ["RAY_AUTH_MODE"] = "token"  # the cluster's mode, for this process's calls to its dashboard too
    os.environ.setdefault("RAY_AUTH_TOKEN", os.urandom(32).hex())
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server: no line per request
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    zips = sorted(Path(args.data).glob("batch*_images.zip"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir("fgbg-bench")
    start = time.perf_counter()
    for z in (zips[0], zips[-1]):
        pafs.copy_files(str(z), f"fgbg-bench/data/{z.name}", destination_filesystem=fs)
    uploaded = time.perf_counter() - start
    out = Path(tempfile.mkdtemp(prefix="fgbg-cluster-s3-"))
    cluster = LoopbackCluster(out / "logs", env=env)
    try:
        cluster.workers = [cluster.add_node(2), cluster.add_node(2)]
        start = time.perf_counter()
        job = cluster.submit(f"python jobs/train.py --data s3://fgbg-bench/data --out {out} --name s3 --epochs 1 --workers 2 "
                             f"--width 0.5 --batch-size 16 --set samples_per_epoch={args.samples} --set test_samples=200 "
                             f"--set placement_strategy=SPREAD --set log_every=1000")
        status = cluster.wait_job(job, 3600)
        seconds = time.perf_counter() - start
        logs = cluster.jobs.get_job_logs(job)
        driver = cluster.jobs.get_job_info(job).driver_info  # (none when the entrypoint failed to start)
        nodes = {a["node_id"] for a in cluster.actors("RayTrainWorker") if driver and a["job_id"] == driver.id}
    finally:
        cluster.shutdown()
        server.stop()
    if status != "SUCCEEDED":
        sys.exit(f"the job {status}:\n{logs[-3000:]}")
    history = [json.loads(line) for line in (out / "s3" / "history.jsonl").read_text().splitlines()]
    last = history[-1]
    result = {"zips": [z.name for z in (zips[0], zips[-1])], "upload_s": round(uploaded, 1), "job_s": round(seconds, 1),
              "train_samples": last["train_samples"], "samples_drawn": last["samples_drawn"],
              "epoch_s": round(last["time_compute"] + last["time_data"], 1), "startup_s": round(last.get("startup_total", 0.0), 1),
              "waiting_for_data": round(last["time_data"] / max(last["time_compute"] + last["time_data"], 1e-9), 3),
              "iou": round(last["iou"], 3), "nodes_training": len(nodes & {n.node_id for n in cluster.workers}),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
