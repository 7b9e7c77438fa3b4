"""What each verb that starts a local cluster listens on: `fgbg train`, `evaluate`, `predict` and `tune`, run as a user
runs them (no --address, no RAY_ADDRESS), each watched from start to exit.

Every 0.2 s the script lists the TCP sockets listening in the command's process and all its descendants (the cluster
it started, its training workers, Ray Data's actors, Tune's trials): what `ss -ltnp` shows for those processes. A
socket on any address but 127.0.0.0/8 or ::1 is reachable from the network (docs/reliability.md, "What a local
cluster listens on").

    python bench/listeners.py
Prints a table; writes bench/out/listeners.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "tests"))

from loopback import beyond_loopback, listeners  # noqa: E402


def watch(args: list[str], env: dict) -> dict:
    """Run one command; every listener of its process tree while it ran, and how it ended."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen, start = set(), time.time()
    while proc.poll() is None:
        seen |= listeners(proc.pid)
        time.sleep(0.2)
    output = proc.stdout.read()
    wider = beyond_loopback(seen)
    return {"command": " ".join(args[1:]), "exit": proc.returncode, "seconds": round(time.time() - start, 1), "listeners": len(seen),
            "addresses": sorted({ip for ip, _, _ in seen}), "processes": sorted({name for *_, name in seen}),
            "beyond_loopback": sorted(f"{ip}:{port} {name}" for ip, port, name in wider), "tail": output[-1500:]}


def main() -> None:
    fgbg = str(Path(sys.executable).parent / "fgbg")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    work = Path(tempfile.mkdtemp(prefix="fgbg-listeners-"))
    subprocess.run([fgbg, "synth", "--out", str(work / "data"), "--batches", "2", "--per-batch", "96", "--size", "64", "--quiet"], check=True)
    (work / "space.yaml").write_text("fixed: {size: 64, width: 0.25, epochs: 1, batch_size: 16, log_every: 100}\n"
                                     "space: {w_depth: {grid: [0.5, 2.0]}}\n")
    data, run = str(work / "data"), str(work / "runs" / "l")
    commands = {
        "train (2 workers)": [fgbg, "train", "--data", data, "--out", str(work / "runs"), "--name", "l", "--size", "64", "--width", "0.25",
                              "--epochs", "2", "--workers", "2", "--batch-size", "16"],
        "evaluate": [fgbg, "evaluate", "--checkpoint", run, "--data", data],
        "predict (Ray Data)": [fgbg, "predict", "--checkpoint", run, "--data", data, "--out", str(work / "pred")],
        "tune (2 trials)": [fgbg, "tune", "--space", str(work / "space.yaml"), "--data", data, "--out", str(work / "sweeps"), "--trials", "1",
                            "--scheduler", "fifo"],
    }
    results = {}
    for label, args in commands.items():
        results[label] = watch(args, env)
        r = results[label]
        print(f"{label:20} exit {r['exit']}  {r['seconds']:6.1f} s  {r['listeners']:3d} listeners on {', '.join(r['addresses'])}; "
              f"beyond loopback: {', '.join(r['beyond_loopback']) or 'none'}", flush=True)
        if r["exit"]:
            print(r["tail"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "listeners.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=1))


if __name__ == "__main__":
    main()
