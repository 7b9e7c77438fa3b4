"""What a sweep shows and writes: the driver's live table of trials (a Tune callback), the rows of results.csv
(best first, by the last epoch's objective) and sweep.png."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path

from ray.tune import Callback

from .config import Config


class SweepTable(Callback):
    """The driver's view of a sweep (a Tune callback): one compact row per trial (state, epoch, IoU, SSIM, objective, its
    parameters), updated as trials report: redrawn in place on a terminal, a line per change in a job's log. Also the
    seconds from each trial's start to its first training step (`starts`)."""

    def __init__(self, keys: list[str], epochs: int, stream=None):
        self.keys, self.epochs, self.stream = keys, epochs, stream
        self.rows: dict[str, dict] = {}
        self.started: dict[str, float] = {}
        self.starts: dict[str, float] = {}
        self.drawn = 0

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self._update(trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("first_step_at") and trial.trial_id in self.started and trial.trial_id not in self.starts:
            self.starts[trial.trial_id] = max(0.0, result["first_step_at"] - self.started[trial.trial_id])
        self._update(trial, "RUNNING", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self.rows.get(trial.trial_id, {})
        self._update(trial, "stopped" if last.get("epoch", self.epochs) < self.epochs else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, "ERROR")

    def _update(self, trial, state: str, result: dict | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {"trial": trial.trial_id, **{k: trial.config.get(k) for k in self.keys}})
        row["state"] = state
        if result:
            row |= {k: result[k] for k in ("epoch", "iou", "ssim", "objective") if k in result}
        self._show(row)

    def lines(self) -> list[str]:
        head = ["trial", "state", "epoch", "IoU", "SSIM", "objective", *self.keys]
        cells = [[r["trial"], r["state"], f"{r['epoch']}/{self.epochs}" if "epoch" in r else "-",
                  *(f"{r[k]:.4f}" if k in r else "-" for k in ("iou", "ssim", "objective")), *(_short(r[k]) for k in self.keys)]
                 for r in self.rows.values()]
        widths = [max(len(str(c)) for c in column) for column in zip(head, *cells)]
        return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *cells]]

    def _show(self, row: dict) -> None:
        stream = self.stream or sys.stdout
        if stream.isatty():
            lines = self.lines()
            stream.write((f"\x1b[{self.drawn}F\x1b[J" if self.drawn else "") + "\n".join(lines) + "\n")
            self.drawn = len(lines)
        else:  # a job's log: the header once, then a line per change
            lines = self.lines()
            stream.write(("" if self.drawn else lines[0] + "\n") + next(line for line, r in zip(lines[1:], self.rows.values()) if r is row) + "\n")
            self.drawn = 1
        stream.flush()


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summarise(grid, base: Config, keys: list[str], starts: dict | None = None) -> list[dict]:
    """One row per trial, best first by its last epoch's objective: its parameters, final and best metrics, epochs run,
    whether it stopped early, the seconds from its start to its first training step."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        if history is None or history.empty or "objective" not in history:
            continue
        last = history.iloc[-1]
        best = history.loc[history["objective"].idxmax()]
        trial = result.metrics.get("trial_id", Path(result.path).name)
        rows.append(
            {
                "trial": trial,
                **{k: result.config.get(k) for k in keys},
                "epochs": int(last["epoch"]),
                "stopped_early": int(last["epoch"]) < base.epochs,
                "iou": float(last["iou"]),
                "ssim": float(last["ssim"]),
                "rmse": float(last["rmse"]),
                "objective": float(last["objective"]),
                "best_objective": float(best["objective"]),
                "best_epoch": int(best["epoch"]),
                "best_iou": float(history["iou"].max()),
                "best_ssim": float(history["ssim"].max()),
                "samples_per_s": float(last["samples_per_s"]),
                "params": int(last["params"]) if "params" in last else None,
                "start_s": round((starts or {}).get(trial, float("nan")), 2),
                "error": bool(result.error),
            }
        )
    return sorted(rows, key=lambda r: -r["objective"])


def csv_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def plot(grid, rows: list[dict], keys: list[str]) -> bytes:
    """A PNG: IoU against SSIM per trial, each trial's objective per epoch, and the last objective against each swept knob
    (a log axis for a knob swept over decades; named or other values side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2 + len(keys)
    per_row = min(columns, 4)
    fig, axes = plt.subplots(-(-columns // per_row), per_row, figsize=(4.2 * per_row, 3.8 * -(-columns // per_row)), squeeze=False)
    axes = axes.ravel()
    left, right = axes[0], axes[1]
    for row in rows:
        left.scatter(row["best_ssim"], row["best_iou"], marker="x" if row["stopped_early"] else "o")
        left.annotate(row["trial"][-5:], (row["best_ssim"], row["best_iou"]), fontsize=7)
    left.set_xlabel("best test SSIM")
    left.set_ylabel("best test IoU")
    left.set_title("trials (x: stopped early)")
    for result in grid:
        h = result.metrics_dataframe
        if h is not None and not h.empty and "objective" in h:
            right.plot(h["epoch"], h["objective"], marker=".", alpha=0.8)
    right.set_xlabel("epoch")
    right.set_ylabel("objective")
    right.set_title("learning curves")
    right.xaxis.get_major_locator().set_params(integer=True)
    for ax, key in zip(axes[2:], keys):
        values = [row[key] for row in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values}) if not numeric else []
        xs = values if numeric else [labels.index(str(v)) for v in values]
        ax.scatter(xs, [row["objective"] for row in rows], c=["tab:gray" if row["stopped_early"] else "tab:blue" for row in rows])
        if numeric and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if labels:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel("last objective")
    for ax in axes[columns:]:
        ax.set_visible(False)
    fig.suptitle("gray: stopped early", fontsize=8, x=0.99, ha="right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()
