"""A run's report: report.md and plots from its config, per-epoch history and evaluation; two runs compared.

Training appends one line per epoch to `history.jsonl` in the run directory (an epoch run again
after a failure replaces its line), so a report can be made at any time, while the run goes on.
"""

from __future__ import annotations

import io
import json
import time

import yaml

from . import storage
from .config import Config
from .errors import FgbgError
from .losses import PARTS

HISTORY = "history.jsonl"
CHANGES = "changes.jsonl"
EVALUATIONS = "evaluations.jsonl"  # one line per `fgbg evaluate` of the run's checkpoints
_TIMES = (("time_compute", "compute"), ("time_data", "waiting for data"), ("time_other", "other"))
_TEST = [("iou", "IoU", ".4f"), ("iou_flat", "IoU (flat)", ".4f"), ("ssim", "SSIM", ".4f"), ("rmse", "RMSE", ".4f"), ("delta1", "δ<1.25", ".4f")]


def append_history(run_dir: str, metrics: dict) -> None:
    """Record an epoch's metrics; lines of this epoch or later (from before a restart) are dropped."""
    path = storage.join(run_dir, HISTORY)
    lines = [m for m in read_history(run_dir) if m["epoch"] < metrics["epoch"]] if storage.info(path).is_file else []
    storage.write_bytes(path, "".join(json.dumps(m) + "\n" for m in [*lines, metrics]).encode())


def append_resume_changes(run_dir: str, after_epoch: int, changed: dict) -> None:
    """Record the settings a resume changed, {key: [before, now]}, in RUN/changes.jsonl (the history keeps one line an epoch)."""
    path = storage.join(run_dir, CHANGES)
    before = storage.read_bytes(path) if storage.info(path).is_file else b""
    line = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "after_epoch": after_epoch, "changed": changed}
    storage.write_bytes(path, before + (json.dumps(line) + "\n").encode())


def read_history(run_dir: str) -> list[dict]:
    try:
        text = storage.read_bytes(storage.join(run_dir, HISTORY)).decode()
    except OSError:
        raise FgbgError(f"{run_dir}: no {HISTORY} (not a run directory, or no epoch has finished yet)") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def append_evaluation(run_dir: str, result: dict) -> None:
    """Record an `fgbg evaluate` of one of the run's checkpoints in the run's list of evaluations."""
    path = storage.join(run_dir, EVALUATIONS)
    before = storage.read_bytes(path) if storage.info(path).is_file else b""
    storage.write_bytes(path, before + (json.dumps(result) + "\n").encode())


def read_evaluations(run_dir: str) -> list[dict]:
    """Every `fgbg evaluate` of the run's checkpoints, latest first (an older run's single evaluation/ folder too)."""
    for path in (storage.join(run_dir, EVALUATIONS), storage.join(run_dir, "evaluation", "metrics.json")):
        if storage.info(path).is_file:
            return [json.loads(line) for line in storage.read_bytes(path).decode().splitlines() if line.strip()][::-1]
    return []


def _plots(history: list[dict]) -> dict[str, bytes]:
    """curves.png (losses and test metrics per epoch) and times.png (compute, data wait, other per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    out = {}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in (("train_loss", "train"), ("loss", "test")):
        axes[0].plot(epochs, [m.get(key) for m in history], marker=".", label=label)
    axes[0].set_title("loss")
    for key in ("iou", "ssim", "delta1"):
        axes[1].plot(epochs, [m.get(key) for m in history], marker=".", label=key)
    axes[1].set_title("test mask IoU, depth SSIM and δ<1.25")
    axes[2].plot(epochs, [m.get("rmse") for m in history], marker=".")
    axes[2].set_title("test depth RMSE")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend()
    axes[1].legend()
    out["curves.png"] = _png(fig, plt)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, label) in zip(axes, _TIMES):
        ax.plot(epochs, [m.get(key, 0.0) for m in history], marker=".")
        ax.set_title(f"seconds {label}")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    out["times.png"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        cells = [format(row[key], fmt) if isinstance(row.get(key), (int, float)) else str(row.get(key, "")) for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(run_dir) -> str:
    """Write report.md, curves.png and times.png into the run directory; returns report.md's path."""
    from .model import build_model
    from .profiling import count_macs

    run_dir = storage.absolute(run_dir)
    history = read_history(run_dir)
    cfg = Config.load(storage.join(run_dir, "config.yaml"), saved=True)
    model = build_model(cfg)
    params, macs = sum(p.numel() for p in model.parameters()), count_macs(model, cfg.size)
    last = history[-1]
    columns = [("epoch", "epoch", "d"), ("train_loss", "train loss", ".4f")]
    columns += [(f"train_{k}", k.replace("_", " "), ".4f") for k in PARTS[1:] if f"train_{k}" in last]
    columns += [("loss", "test loss", ".4f"), *_TEST, ("lr", "lr", ".2e"), ("samples_per_s", "samples/s", ".1f"),
                ("time_compute", "compute s", ".1f"), ("time_data", "data wait s", ".1f"), ("time_other", "other s", ".1f")]
    totals = {key: sum(m.get(key, 0.0) for m in history) for key, _ in _TIMES}
    whole = sum(totals.values()) or 1.0
    lines = [f"# Run {cfg.name}", "", f"`{run_dir}`: {len(history)} of {cfg.epochs} epochs, data `{cfg.data}`.", ""]
    lines += ["## Model", "", f"{params:,} parameters; {macs / 1e6:,.1f} M MACs per sample at {cfg.size}×{cfg.size} (thop).", ""]
    lines += ["## Metrics per epoch", "", "Test metrics over the whole test split; time in seconds per epoch (all workers in parallel).", ""]
    lines += [*_table(history, columns), ""]
    lines += ["## Time", ""]
    lines += [f"- {label}: {totals[key]:.1f} s ({100 * totals[key] / whole:.0f}%)" for key, label in _TIMES]
    lines += [f"- throughput: {last.get('samples_per_s', 0.0):.1f} samples/s in the last epoch, "
              f"{max(m.get('samples_per_s', 0.0) for m in history):.1f} at best", ""]
    evaluations = read_evaluations(run_dir)
    lines += ["## Evaluations", ""]
    if evaluations:
        lines += ["Every `fgbg evaluate` of this run's checkpoints, latest first; baseline: the IoU of |fg_bg − bg| > 0.1 on the same data.", ""]
        rows = [{**e, "where": f"{e['split']} split of `{e['data']}`" + (", mirrored too (--flip)" if e.get("flip") else ""),
                 "folder": f"`{e.get('out', '')}`"} for e in evaluations]
        lines += [*_table(rows, [("where", "data", "s"), ("samples", "samples", "d"), *_TEST[:1], ("baseline_iou", "baseline IoU", ".4f"),
                                 *_TEST[1:], ("folder", "folder", "s")]), ""]
        latest = evaluations[0].get("pictures", "")
        lines += [f"![latest evaluation]({latest.removeprefix(run_dir + '/')})", ""] if latest else []
    else:
        lines += [f"No `fgbg evaluate` yet; the last epoch's test metrics: IoU {last['iou']:.4f}, SSIM {last['ssim']:.4f}, "
                  f"RMSE {last['rmse']:.4f}. Best IoU {last.get('best_iou', last['iou']):.4f}.", ""]
    lines += ["## Pictures", "", "![learning curves](curves.png)", "", "![time per epoch](times.png)", "",
              f"TensorBoard (scalars, a picture grid per epoch, profiler traces): `tensorboard --logdir {storage.join(run_dir, 'tensorboard')}`", ""]
    profiles = [f.path for f in storage.listdir(storage.join(run_dir, "profile"))] if storage.is_dir(storage.join(run_dir, "profile")) else []
    if profiles:
        lines += ["## Profiles", "", *[f"- [{p}](profile/{p})" for p in sorted(profiles)], ""]
    lines += ["## Config", "", "```yaml", cfg.to_yaml().rstrip(), "```", ""]
    for name, png in _plots(history).items():
        storage.write_bytes(storage.join(run_dir, name), png)
    path = storage.join(run_dir, "report.md")
    storage.write_bytes(path, "\n".join(lines).encode())
    return path


def compare(run_a, run_b) -> str:
    """The last epoch's metrics and the median time per epoch of two runs, side by side with B − A."""
    import statistics

    runs = [storage.absolute(r) for r in (run_a, run_b)]
    histories = [read_history(r) for r in runs]
    rows = []
    for key in ("epoch", "loss", "iou", "iou_flat", "ssim", "rmse", "delta1", "best_iou", "params"):
        values = [h[-1].get(key) for h in histories]
        if all(isinstance(v, (int, float)) for v in values):
            rows.append((key, *values))
    for key in ("samples_per_s", "time_compute", "time_data", "time_other"):
        values = [statistics.median(m.get(key, 0.0) for m in h) for h in histories]
        rows.append((f"{key} (median)", *values))
    configs = [yaml.safe_load(storage.read_bytes(storage.join(r, "config.yaml"))) for r in runs]
    changed = {k for k in configs[0].keys() | configs[1].keys() if configs[0].get(k) != configs[1].get(k)} - {"name"}
    lines = [f"A: {runs[0]}", f"B: {runs[1]}", f"{'':24} {'A':>12} {'B':>12} {'B − A':>12}"]
    lines += [f"{key:24} {a:12.4f} {b:12.4f} {b - a:+12.4f}" for key, a, b in rows]
    if changed:
        lines.append("config differs in: " + ", ".join(f"{k} ({configs[0].get(k)!r} → {configs[1].get(k)!r})" for k in sorted(changed)))
    return "\n".join(lines)
