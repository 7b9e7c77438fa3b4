"""Scaling and latency on a running cluster: 1 against 2 training workers, and submission to first step.

A head (no CPUs, as cluster.yaml's) and one worker node of 3 CPUs run as `ray start` processes on
127.0.0.1 (the tests' loopback cluster). `jobs/train.py` goes in through the Job Submission API
with this repository as its working_dir, as `ray job submit` sends it, alternating 1 and 2
workers (1 CPU each, so 1 worker trains on one core, 2 on both). Latency: from `submit_job` to
the job's log showing step 1, polled every 0.1 s, split into its parts by the start-up marks
`fgbg train` records in its first epoch's metrics (fgbg.train.startup_parts). Throughput: medians of the jobs' epochs
after the first.
    python bench/scaling.py [--size 64] [--samples 640] [--epochs 3] [--repeats 5]
Prints a table and writes bench/out/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # this cluster's own; nothing written to ~/.ray
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from fgbg.report import read_history  # noqa: E402
from fgbg.synth import SynthSpec, write_dataset  # noqa: E402

from loopback import LoopbackCluster  # noqa: E402

OUT = Path(__file__).parent / "out"


def run_job(cluster: LoopbackCluster, entrypoint: str) -> float:
    """Seconds from submission to the first training step in the job's log; waits for the job to end."""
    t = time.perf_counter()
    job = cluster.submit(entrypoint)
    first = None
    while first is None:
        if re.search(r"step 1/\d+ ", cluster.jobs.get_job_logs(job)):
            first = time.perf_counter() - t
        elif cluster.jobs.get_job_status(job) in ("FAILED", "STOPPED", "SUCCEEDED"):
            raise RuntimeError(f"job ended before its first step:\n{cluster.jobs.get_job_logs(job)[-3000:]}")
        time.sleep(0.1)
    status = cluster.wait_job(job, 1200)
    if status != "SUCCEEDED":
        raise RuntimeError(f"job {status}:\n{cluster.jobs.get_job_logs(job)[-3000:]}")
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=640, help="training samples (one batch of them, and a small test batch)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    data = OUT / f"scaling-{args.size}-{args.samples}"
    if not data.exists():
        write_dataset(SynthSpec(str(data), batches=2, per_batch=args.samples, size=args.size, seed=4), workers=0)
    runs = Path(tempfile.mkdtemp(prefix="fgbg-scaling-"))
    cluster = LoopbackCluster(runs / "logs")
    latency, rates, startup = {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}
    try:
        cluster.add_node(3)
        for r in range(args.repeats):
            for workers in (1, 2):  # alternating: a slow spell of the machine hits both alike
                name = f"w{workers}-{r}"
                latency[workers].append(run_job(cluster, (
                    f"python jobs/train.py --data {data} --out {runs} --name {name} --size {args.size} --epochs {args.epochs} "
                    f"--workers {workers} --batch-size 32 --test-samples 64 --set log_every=1")))
                history = read_history(runs / name)
                rates[workers] += [m["samples_per_s"] for m in history[1:]]
                parts = {k.removeprefix("startup_"): v for k, v in history[0].items() if k.startswith("startup_")}
                # before fgbg's own marks: the job's driver starting (working_dir, Python and imports)
                startup[workers].append({"job": latency[workers][-1] - parts.pop("total"), **parts})
                print(f"  {name}: first step after {latency[workers][-1]:.1f} s", flush=True)
    finally:
        cluster.shutdown()

    summary = {"size": args.size, "samples": args.samples, "epochs": args.epochs, "repeats": args.repeats, "workers": {}}
    print(f"\n{'workers':<8} {'samples/s':>10} {'submit → step 1 (s)':>20}   latencies")
    for w in (1, 2):
        summary["workers"][w] = {"median_samples_per_s": round(statistics.median(rates[w]), 2), "epoch_rates": [round(x, 1) for x in rates[w]],
                                 "median_latency_s": round(statistics.median(latency[w]), 2), "latencies_s": [round(x, 2) for x in latency[w]]}
        s = summary["workers"][w]
        print(f"{w:<8} {s['median_samples_per_s']:>10} {s['median_latency_s']:>20}   {s['latencies_s']}")
    summary["speedup_2_over_1"] = round(summary["workers"][2]["median_samples_per_s"] / summary["workers"][1]["median_samples_per_s"], 3)
    print(f"2 workers / 1 worker: {summary['speedup_2_over_1']}")
    print("\nsubmission → step 1, medians in seconds (fgbg.train's start-up marks; job = before fgbg's fit begins)")
    parts = list(startup[1][0])
    print(f"{'workers':<8} " + " ".join(f"{p.replace('_', ' '):>12}" for p in parts))
    for w in (1, 2):
        summary["workers"][w]["startup_median_s"] = {p: round(statistics.median(x[p] for x in startup[w]), 2) for p in parts}
        print(f"{w:<8} " + " ".join(f"{summary['workers'][w]['startup_median_s'][p]:>12}" for p in parts))
    OUT.mkdir(exist_ok=True)
    (OUT / "scaling.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
