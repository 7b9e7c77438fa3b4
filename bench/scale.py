"""Every stage at three sizes of the original's layout (10 batches of 400, 4,000 and 40,000 samples: 4k, 40k, 400k):
does its steady rate hold, and does its memory stay flat, as the dataset grows?

Each stage runs as its own command, as a user runs it (a local cluster started by the command). While it runs,
the script samples every second the memory of each process of the command's tree (its unique set size: its own
pages, not the object store's that it maps; the driver, each Ray Train worker, each other Ray worker, the largest of
each kind reported) and, through Ray's own memory summary, the object store's use. Steady samples/s leave the
start-up out (the first batch, or the first batch of files); the start-up is reported apart.

  synth         fgbg synth --batches 10 --per-batch P            steady: batches 2–10 over the time between their zips' writes
  inspect       fgbg inspect DATA (after --quick, which indexes)   every file checked, from its report's own times
  ingest        an epoch of the training split's draws on Ray Data, no training (this script's `pass` step): one
                pass, and at 4k ten (36,000 samples); the zips in the page cache first (as for train, evaluate, predict)
  cache write   the training split decoded into --cache (this script's `pass --cache`): steady between the first and last shard
  cache read    the same from the cache, the page cache dropped first (cold: the disk's own rate; at 4k only
                the first of the ten passes is cold)
  train         fgbg train, 2 epochs of --samples-per-epoch drawn from the whole split (epoch 2's rate, its first batch left out)
  evaluate      fgbg evaluate on the test batch (4,000 and 40,000 samples at 40k and 400k; at 4k, whose test batch is
                400 samples (about 10 s), on --split all: 4,000 samples, a run as long as 40k's)
  predict       fgbg predict over the test batch, on Ray Data (at 4k on --split all, as evaluate)

    python bench/scale.py --root /work/scale                      # all sizes and stages; resumable (bench/out/scale.json)
    python bench/scale.py --root /work/scale --sizes 400 --stages synth,inspect
    python bench/scale.py --root /work/scale --sizes 400,40000 --stages cache_read --again --repeat 3   # sizes in turn, medians
Prints a table; writes bench/out/scale.json after every stage, so a long run can continue another day.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "scale.json"
STAGES = ("synth", "inspect", "ingest", "cache_write", "cache_read", "train", "evaluate", "predict")
FGBG = str(Path(sys.executable).parent / "fgbg")


class Watch:
    """Peak memory of a command's process tree by kind of process (unique set size: its own pages, not the object
    store's it maps), and of Ray's object store, sampled every second."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.store = pid, {}, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def kind(process: psutil.Process, root: int) -> str:
        if process.pid == root:
            return "driver"
        name = process.name()
        if name.startswith("ray::RayTrainWorker"):
            return "train_worker"
        if name.startswith("ray::"):
            return "ray_worker"  # Ray Data's tasks and actors, Tune's trials, Ray's own actors
        return "ray_service"  # GCS, raylet, dashboard, agents

    def _run(self) -> None:
        gcs, gcs_process = None, None
        while not self.done.is_set():
            try:
                root = psutil.Process(self.pid)
                for p in [root, *root.children(recursive=True)]:
                    try:
                        # USS: the process's own memory; RSS would count the object store's pages it has mapped too
                        kind, own = self.kind(p, self.pid), p.memory_full_info().uss
                        if gcs is None and p.name() == "gcs_server":  # (its port is picked at start: the one it listens on)
                            gcs = next((c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN), None)
                            gcs_process = p
                    except psutil.Error:
                        continue
                    self.peak[kind] = max(self.peak.get(kind, 0), own)
            except psutil.Error:
                pass
            if gcs and gcs_process.is_running():
                self.store = max(self.store, _object_store_bytes(f"127.0.0.1:{gcs}"))
            time.sleep(1.0)

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        return {f"peak_{k}_mb": round(v / 2**20) for k, v in sorted(self.peak.items())} | {"peak_object_store_mb": round(self.store / 2**20)}


def _object_store_bytes(address: str) -> int:
    """What Ray's object store holds now (`ray memory --stats-only`), 0 if the cluster does not answer."""
    try:
        from ray._private.internal_api import memory_summary

        text = memory_summary(address, stats_only=True)
    except Exception:
        return 0
    match = re.search(r"Plasma memory usage (\d+) MiB", text)
    return int(match.group(1)) * 2**20 if match else 0


def run(args: list[str], env: dict | None = None) -> dict:
    """A command run to its end, watched; its seconds, output and peaks."""
    start = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or os.environ.copy())
    watch = Watch(proc.pid)
    output = proc.stdout.read()
    proc.wait()
    peaks = watch.stop()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{output[-3000:]}")
    return {"seconds": round(time.time() - start, 1), "output": output, **peaks}


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def disk_rate(cache: Path, limit: int = 2 * 2**30) -> float | None:
    """MB/s reading up to 2 GiB of the cache's shards cold, one after another in 8 MiB reads (the page cache dropped
    first; None if it cannot be)."""
    if not drop_page_cache():
        return None
    done, start = 0, time.perf_counter()
    for path in sorted(glob.glob(str(cache / "*" / "*" / "shard-*.npz")))[::-1]:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(8 << 20):
                done += len(chunk)
        if done >= limit:
            break
    return round(done / 2**20 / (time.perf_counter() - start), 1)


def sample_bytes(size: int) -> int:
    sys.path.insert(0, str(ROOT))
    from fgbg.cache import sample_bytes as shard_bytes

    return shard_bytes(size)


def warm(data: Path) -> None:
    """Read the dataset's zips once, so that the stages reading JPEGs start with them in the page cache, at every size
    (the original's 3 GB fit in memory; the cache stages, which drop it, would otherwise leave the largest one cold)."""
    for path in sorted(data.glob("*.zip")):
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def stage(name: str, per_batch: int, data: Path, work: Path) -> dict:
    n = 10 * per_batch
    if name in ("ingest", "train", "evaluate", "predict"):
        warm(data)
    if name == "synth":
        r = run([FGBG, "synth", "--out", str(data), "--batches", "10", "--per-batch", str(per_batch), "--seed", "0", "--quiet"])
        times = sorted(os.path.getmtime(p) for p in glob.glob(str(data / "batch*_images.zip")))
        steady = 9 * per_batch / (times[-1] - times[0])
        return r | {"samples": n, "steady_per_s": round(steady, 1), "startup_s": round(r["seconds"] - n / steady, 1),
                    "disk_mb": round(sum(os.path.getsize(p) for p in glob.glob(str(data / "*.zip"))) / 2**20)}
    if name == "inspect":  # --quick first: it builds the index (then cached beside the data), which the full check reads
        quick = run([FGBG, "inspect", str(data), "--quick", "--json"])
        r = run([FGBG, "inspect", str(data), "--json"])
        report = json.loads(r["output"][r["output"].index("{"):])
        manifest = next(iter(glob.glob(str(data / ".fgbg_manifest*"))), None)
        return r | {"samples": n, "steady_per_s": round(n / max(report["seconds"]["check"], 1e-9), 1), "startup_s": report["seconds"]["index"],
                    "files_checked": report["files_checked"], "quick_s": quick["seconds"],
                    "index_s": json.loads(quick["output"][quick["output"].index("{"):])["seconds"]["index"],
                    "index_bytes_per_sample": round(os.path.getsize(manifest) / n, 1) if manifest else None}
    if name in ("ingest", "cache_write", "cache_read"):
        cache = ["--cache", str(work / "cache")] if name != "ingest" else []
        if name == "cache_write":
            shutil.rmtree(work / "cache", ignore_errors=True)
        if name == "cache_read":
            cold = drop_page_cache()
        # at least 36,000 samples (passes over a small split as samples_per_epoch draws them): a pass over 4k's 3,600 lasts
        # 1.4 s, mostly the blocks Ray Data decoded before the first batch came
        r = run([sys.executable, __file__, "pass", str(data), *cache, "--samples", str(max(36000, 9 * per_batch))])
        result = json.loads(r["output"].strip().splitlines()[-1])
        if name == "cache_write":
            shards = sorted(os.path.getmtime(p) for p in glob.glob(str(work / "cache" / "*" / "*" / "shard-*.npz")))
            # both splits are cached (all n samples), the first shard's write marks the start
            result["steady_per_s"] = round((n - n / len(shards)) / max(shards[-1] - shards[0], 1e-9), 1)
            result["startup_s"] = round(result["dataset_s"] - n / result["steady_per_s"], 1)  # the build's own, before its shards
            disk = sum(os.path.getsize(p) for p in glob.glob(str(work / "cache" / "*" / "*" / "*")))  # both splits' shards
            result |= {"disk_mb": round(disk / 2**20), "bytes_per_sample": round(disk / n)}
        if name == "cache_read":
            result["page_cache_dropped"] = cold
            result["disk_read_mb_per_s"] = disk_rate(work / "cache")  # what the disk gave just after, cold: the bound at 400k
            result["read_mb_per_s"] = round(result["steady_per_s"] * sample_bytes(160) / 2**20, 1)
        return r | result
    if name == "train":
        shutil.rmtree(work / "runs", ignore_errors=True)
        r = run([FGBG, "train", "--data", str(data), "--out", str(work / "runs"), "--name", "scale", "--epochs", "2", "--workers", "2",
                 "--width", "0.5", "--batch-size", "16", "--test-samples", "200", "--set", "samples_per_epoch=2000", "--set", "log_every=1000"])
        history = [json.loads(line) for line in (work / "runs" / "scale" / "history.jsonl").read_text().splitlines()]
        last = history[-1]
        pass_s = last["time_compute"] + last["time_data"] - last.get("time_first_batch", 0.0)
        return r | {"samples": last["train_samples"], "steady_per_s": round(last["train_samples"] / pass_s, 1),
                    "startup_s": round(history[0].get("startup_total", 0.0), 1), "waiting_for_data": round(last["time_data"] / pass_s, 3)}
    split = "all" if per_batch < 4000 else "test"  # runs of at least 4,000 samples: 4k's test batch lasts seconds
    if name == "evaluate":
        r = run([FGBG, "evaluate", "--checkpoint", str(work / "runs" / "scale"), "--data", str(data), "--split", split, "--json",
                 "--out", str(work / "evaluation")])
        result = json.loads(r["output"][r["output"].index("{"):])
        return r | {"samples": result["samples"], "steady_per_s": result["samples_per_s"], "startup_s": result["first_batch_s"]}
    if name == "predict":
        shutil.rmtree(work / "predictions", ignore_errors=True)  # (a job into the same folder would resume: nothing to do)
        r = run([FGBG, "predict", "--checkpoint", str(work / "runs" / "scale"), "--data", str(data), "--split", split, "--json",
                 "--out", str(work / "predictions")])
        result = json.loads(r["output"][r["output"].index("{"):])
        steady = result["predicted"] / max(result["seconds"] - result["first_s"], 1e-9)
        return r | {"samples": result["samples"], "steady_per_s": round(steady, 1), "startup_s": result["first_s"]}
    raise ValueError(name)


def one_pass(data: str, cache: str | None, samples: int) -> None:
    """One epoch of `samples` drawn from the training split on Ray Data, nothing trained: samples/s after the first
    batch (prints JSON)."""
    from fgbg.cluster import connect, quiet_ray_data
    from fgbg.config import Config
    from fgbg.ingest import load_tables, make_datasets

    cfg = Config(data=data, cache=cache or "", workers=1, size=160, epochs=1, samples_per_epoch=samples)
    tables = load_tables(cfg)
    connect(num_cpus=os.cpu_count())
    quiet_ray_data()
    start = time.perf_counter()
    ds = make_datasets(cfg, tables)["train"]
    made = time.perf_counter()
    first, seen = None, 0
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        if first is None:
            first, first_n = time.perf_counter(), len(batch["bad"])
        seen += len(batch["bad"])
    end = time.perf_counter()
    print(json.dumps({"samples": seen, "steady_per_s": round((seen - first_n) / max(end - first, 1e-9), 1),
                      "startup_s": round(first - start, 1), "dataset_s": round(made - start, 1)}))


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from fgbg.cluster import loopback_only

    loopback_only()  # (this process reads the object store's use from the commands' clusters, which are on loopback,
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # with token auth: Ray 2.60's default for a local cluster)
    if len(sys.argv) > 1 and sys.argv[1] == "pass":
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("data")
        ap.add_argument("--cache")
        ap.add_argument("--samples", type=int, default=0)
        a = ap.parse_args()
        return one_pass(a.data, a.cache, a.samples)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="where the datasets, caches and runs go (about 40 GB for 400k); not needed with --table")
    ap.add_argument("--sizes", default="400,4000,40000", help="samples per batch, 10 batches each")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--again", action="store_true", help="measure stages already in bench/out/scale.json again")
    ap.add_argument("--table", action="store_true", help="only print the table of what bench/out/scale.json holds")
    ap.add_argument("--repeat", type=int, default=1, help="rounds: each round runs every size's stages in turn; the median run kept "
                    "(its memory peaks the rounds' largest), every round's rate beside it")
    args = ap.parse_args()
    if args.table:
        return print(table(json.loads(OUT.read_text())))
    if not args.root:
        ap.error("--root is needed to measure")
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    rounds: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeat):
        for per_batch in [int(p) for p in args.sizes.split(",")]:
            key = str(10 * per_batch)
            data, work = Path(args.root) / f"data-{key}", Path(args.root) / f"work-{key}"
            work.mkdir(parents=True, exist_ok=True)
            for name in args.stages.split(","):
                if name in results.get(key, {}) and not args.again and (key, name) not in rounds:
                    continue
                print(f"{key} samples: {name} …", flush=True)
                r = stage(name, per_batch, data, work)
                r.pop("output", None)
                r["date"] = time.strftime("%Y-%m-%d %H:%M")
                runs = rounds.setdefault((key, name), [])
                runs.append(r)
                results.setdefault(key, {})[name] = _median_run(runs)
                OUT.parent.mkdir(parents=True, exist_ok=True)
                OUT.write_text(json.dumps(results, indent=1))
                print(f"  {json.dumps(r)}", flush=True)
    print(table(results))


def _median_run(runs: list[dict]) -> dict:
    """The run with the median steady rate, with each run's rate and the largest of each memory peak."""
    if len(runs) == 1:
        return runs[0]
    median = sorted(runs, key=lambda r: r["steady_per_s"])[(len(runs) - 1) // 2]
    peaks = {k: max(r[k] for r in runs if k in r) for k in median if k.startswith("peak_")}
    return median | peaks | {"rounds_steady_per_s": [r["steady_per_s"] for r in runs]}


def table(results: dict) -> str:
    """A markdown table: per stage and size, steady samples/s, start-up, peak memory (MB); the largest:smallest ratio."""
    sizes = sorted(results, key=int)
    memory = ("peak_driver_mb", "peak_train_worker_mb", "peak_ray_worker_mb", "peak_object_store_mb")
    lines = ["| stage | " + " | ".join(f"{int(s) // 1000}k: steady/s, start-up s" for s in sizes) + " | steady ratio "
             f"{int(sizes[-1]) // 1000}k:{int(sizes[0]) // 1000}k | peak MB driver / train worker / other worker / object store, "
             + ", ".join(f"{int(s) // 1000}k" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes) + "---:|---|"]
    for name in STAGES:
        got = [results[s].get(name) for s in sizes]
        if not any(got):
            continue
        cells = [f"{g['steady_per_s']:,.1f}, {max(g.get('startup_s', 0), 0):.1f}" if g else "—" for g in got]  # (synth: < 0 when
        # the first batch was written faster than the steady rate, its processes starting together)
        ratio = f"{got[-1]['steady_per_s'] / got[0]['steady_per_s']:.2f}" if got[0] and got[-1] else "—"
        peaks = "; ".join(" / ".join(str(g.get(k, "–")) for k in memory) if g else "—" for g in got)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {peaks} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
