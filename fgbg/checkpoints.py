"""The checkpoint format, in one place: how a checkpoint is written, found, resolved and loaded.

A checkpoint is a folder (`checkpoint_*/` under the run directory, persisted by Ray Train) with:
  model.pt      the weights (a state_dict): what evaluate, predict and resume load
  state.pt      the rest of the training state: optimiser, schedule, epoch, best IoU, step
  config.yaml   the run's resolved config
  metrics.json  the epoch's metrics
Checkpoints written before fgbg 0.1's format settled also hold the weights in state.pt["model"];
they load the same. Everything is read with `torch.load(weights_only=True)`: nothing is unpickled.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from . import storage
from .config import Config
from .errors import FgbgError
from .model import build_model

MODEL, STATE, CONFIG, METRICS = "model.pt", "state.pt", "config.yaml", "metrics.json"


def write(folder: str | Path, weights: dict, state: dict, cfg: Config, metrics: dict) -> None:
    """Write a checkpoint into a local folder (Ray Train uploads it from there)."""
    folder = Path(folder)
    torch.save(weights, folder / MODEL)
    torch.save(state, folder / STATE)
    (folder / CONFIG).write_text(cfg.to_yaml())
    # the other files' sizes: a folder that a full disk or a lost upload left half-copied (Ray Train copies
    # the files in no set order) is told from a whole one by `find`
    files = {name: (folder / name).stat().st_size for name in (MODEL, STATE, CONFIG)}
    (folder / METRICS).write_text(json.dumps({**metrics, "files": files}, indent=2))


def write_untrained(folder: str | Path, cfg: Config) -> str:
    """A checkpoint of the config's model as built, before any training (tests, benchmarks); the folder, made if need be."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    write(folder, build_model(cfg).state_dict(), {"epoch": 0, "best_iou": 0.0, "step": 0}, cfg, {"epoch": 0, "iou": 0.0})
    return str(folder)


def read_training_state(folder: str | Path, device) -> tuple[dict, dict, dict]:
    """(weights, training state, metrics) of a local checkpoint folder, to resume from."""
    folder = Path(folder)
    state = load_tensors(str(folder / STATE), device)  # (the same checks: a dict of tensors and numbers)
    weights = state.pop("model", None)  # an older checkpoint keeps a copy of the weights here
    if (folder / MODEL).is_file():
        weights = load_tensors(str(folder / MODEL), device)
    try:
        metrics = json.loads((folder / METRICS).read_text())
    except (OSError, ValueError) as e:
        raise FgbgError(f"{folder / METRICS}: cannot read the checkpoint's metrics ({e})") from None
    return weights, state, metrics


def find(run_dir: str) -> list[tuple[str, dict]]:
    """(checkpoint folder, its metrics) for every whole checkpoint of a run (local or on an object store), oldest
    first; a folder whose files are missing or not the sizes its metrics.json records was not written out whole."""
    found = []
    if storage.is_dir(run_dir):
        for entry in storage.listdir(run_dir):
            folder = storage.join(run_dir, entry.path)
            if entry.is_file or not entry.path.startswith("checkpoint_"):
                continue
            if (metrics := _whole(folder)) is not None:
                found.append((folder, metrics))
    return sorted(found, key=lambda c: c[1]["epoch"])


def _whole(folder: str) -> dict | None:
    """A checkpoint folder's metrics, or None unless its metrics.json and the files it lists are all there whole
    (checkpoints from before the sizes were recorded count as whole when they have metrics.json)."""
    try:
        metrics = json.loads(storage.read_bytes(storage.join(folder, METRICS)))
    except (FileNotFoundError, ValueError):  # (a half-written metrics.json is not JSON)
        return None
    sizes = metrics.get("files", {})
    return metrics if all(storage.info(storage.join(folder, name)).size == size for name, size in sizes.items()) else None


def iou_score(metrics: dict) -> float:
    """A checkpoint's test IoU for ranking; an epoch that was not tested (NaN: test_small_epochs) ranks last."""
    iou = metrics.get("iou", float("nan"))
    return -1.0 if iou != iou else iou


def resolve(path) -> str:
    """A checkpoint folder as given, or a run directory's best checkpoint (highest test IoU); local or a URI."""
    path = storage.absolute(path)
    if storage.info(storage.join(path, MODEL)).is_file:
        return path
    found = find(path)
    if found:
        return max(found, key=lambda c: iou_score(c[1]))[0]
    raise FgbgError(f"{path}: not a checkpoint (expected a folder with {MODEL}, or a run directory with checkpoint_* folders)")


def load_model(checkpoint, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config, str]:
    """The model of a checkpoint or run directory, in eval mode and in the memory format it trained in (channels_last
    by default: on a CPU it infers 2.2x as fast as contiguous at 160x160), its config and the checkpoint folder."""
    ckpt = resolve(checkpoint)
    cfg = Config.load(storage.join(ckpt, CONFIG), saved=True)
    model = build_model(cfg)
    load_tensors(storage.join(ckpt, MODEL), device, model)
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format).eval(), cfg, ckpt


def load_tensors(path: str, device="cpu", model: torch.nn.Module | None = None) -> dict:
    """The dict of tensors in a checkpoint's model.pt or state.pt, loaded with weights_only (and checked against a
    model when one is given); a file that is truncated, is not such a dict or holds another model's weights is an
    FgbgError naming it."""
    try:
        weights = torch.load(io.BytesIO(storage.read_bytes(path)), map_location=device, weights_only=True)
        if not isinstance(weights, dict):
            raise ValueError(f"holds a {type(weights).__name__}, not a state_dict")
        if model is not None:
            expected = model.state_dict()
            missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
            shapes = sorted(k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape)
            if missing or unexpected or shapes:
                example = f" (e.g. {shapes[0]}: {tuple(weights[shapes[0]].shape)}, the config's model {tuple(expected[shapes[0]].shape)})" if shapes else ""
                raise ValueError(f"another model's weights: {len(shapes)} tensors of other shapes{example}, {len(missing)} missing, "
                                 f"{len(unexpected)} unexpected; was it saved with this {CONFIG}?")
            model.load_state_dict(weights)
    except FileNotFoundError:
        raise FgbgError(f"{path}: no such file (a checkpoint folder holds {MODEL}, {STATE}, {CONFIG} and {METRICS})") from None
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError … for a damaged file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FgbgError(f"{path}: does not load ({reason[:300]})") from None
    return weights
