"""Evaluate a checkpoint on any dataset in the layout, and predict for a user's own image pairs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import storage
from .config import Config
from .errors import FgbgError
from .pictures import plasma, png_bytes, result_grid
from .step import default_device
from .train import build_model, find_checkpoints


def resolve_checkpoint(path) -> str:
    """A checkpoint folder as given, or a run directory's best checkpoint (highest test IoU); local or a URI."""
    path = storage.absolute(path)
    if storage.info(storage.join(path, "model.pt")).is_file:
        return path
    found = find_checkpoints(path)
    if found:
        return max(found, key=lambda c: c[1]["iou"])[0]
    raise FgbgError(f"{path}: not a checkpoint (expected a folder with model.pt, or a run directory with checkpoint_* folders)")


def load_model(checkpoint, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config, str]:
    """The model of a checkpoint (weights only: nothing is unpickled), in eval mode, and its config."""
    ckpt = resolve_checkpoint(checkpoint)
    cfg = Config.load(storage.join(ckpt, "config.yaml"))
    model = build_model(cfg)
    weights = io.BytesIO(storage.read_bytes(storage.join(ckpt, "model.pt")))
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model.to(device).eval(), cfg, ckpt


def evaluate(checkpoint, data, split: str = "test", out=None, batch_size: int = 32, on_bad: str = "error", address=None) -> dict:
    """Metrics of a checkpoint over a dataset's test split (or all of it), decoded by Ray Data at the model's size.

    Writes metrics.json and results.png (bg, fg_bg, true and predicted mask, true and predicted depth) to out.
    """
    from tqdm import tqdm

    from .ingest import IngestConfig, build_dataset
    from .layout import load_manifest
    from .metrics import SetMetrics
    from .train import connect, evaluate_batches, quiet_ray_data

    if split not in ("test", "all"):
        raise FgbgError(f"--split must be test or all, not {split!r}")
    device = default_device()
    model, cfg, ckpt = load_model(checkpoint, device)
    manifest = load_manifest(data)
    if manifest.problems and on_bad == "error":
        raise FgbgError(f"{data}: {len(manifest.problems)} problem(s) in the dataset, first: {manifest.problems[0]} (run `fgbg inspect`, or use --on-bad skip)")
    table = manifest.table if split == "all" else manifest.split()["test"]
    if table.num_rows == 0:
        raise FgbgError(f"{data}: no samples in the {split} split")
    connect(address)
    quiet_ray_data()
    ds = build_dataset(manifest.with_paths(table), IngestConfig(size=cfg.size, on_bad=on_bad))
    grid = {}

    def keep_grid(batch, mask_logits, depth):
        grid["image"] = result_grid(batch, mask_logits, depth)

    batches = tqdm(ds.iter_torch_batches(batch_size=batch_size), total=-(-table.num_rows // batch_size), desc="evaluate",
                   unit="batch", disable=None)  # a bar on a terminal only
    sums = evaluate_batches(model, batches, device, on_first=keep_grid).sums
    metrics = SetMetrics.compute(sums)
    metrics.pop("loss")
    result = {**metrics, "checkpoint": ckpt, "data": storage.absolute(data), "split": split}
    out = storage.absolute(out) if out else storage.join(ckpt.rsplit("/", 1)[0], "evaluation")
    storage.write_bytes(storage.join(out, "metrics.json"), json.dumps(result, indent=2).encode())
    if grid:
        storage.write_bytes(storage.join(out, "results.png"), png_bytes(grid["image"]))
    result["pictures"] = storage.join(out, "results.png")
    return result


def _load_rgb(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    try:
        img = Image.open(path).convert("RGB")
    except Exception as e:
        raise FgbgError(f"{path}: cannot read the image ({e})") from None
    original = img.size
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None], original


def _pairs(fg_bg: Path, bg: Path) -> list[tuple[Path, Path]]:
    """(fg_bg, bg) pairs: two files; a folder of fg_bg images with one bg; or two folders matched by name."""
    if not fg_bg.exists() or not bg.exists():
        raise FgbgError(f"{fg_bg if not fg_bg.exists() else bg}: no such file or folder")
    if fg_bg.is_file():
        if bg.is_dir():
            raise FgbgError(f"{bg}: a folder of backgrounds needs a folder of fg_bg images (--fg-bg DIR)")
        return [(fg_bg, bg)]
    images = sorted(p for p in fg_bg.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise FgbgError(f"{fg_bg}: no .jpg or .png images in it")
    if bg.is_file():
        return [(p, bg) for p in images]
    missing = [p.name for p in images if not (bg / p.name).is_file()]
    if missing:
        raise FgbgError(f"{bg}: no background named like {', '.join(missing[:5])} (backgrounds are matched to fg_bg images by file name)")
    return [(p, bg / p.name) for p in images]


def predict(checkpoint, fg_bg, bg, out) -> list[dict]:
    """mask.png (white foreground on black) and depth.png (plasma) for each pair, at the fg_bg image's size."""
    model, cfg, _ = load_model(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(Path(fg_bg), Path(bg))
    written = []
    with torch.no_grad():
        for fg_path, bg_path in pairs:
            x, original = _load_rgb(fg_path, cfg.size)
            b, _ = _load_rgb(bg_path, cfg.size)
            mask_logits, depth = model(x, b)
            mask = (torch.sigmoid(mask_logits[0, 0]) > 0.5).numpy().astype(np.uint8) * 255
            prefix = "" if len(pairs) == 1 else f"{fg_path.stem}_"
            mask_path, depth_path = out / f"{prefix}mask.png", out / f"{prefix}depth.png"
            Image.fromarray(mask).resize(original, Image.NEAREST).save(mask_path)
            Image.fromarray(plasma(depth[0, 0].numpy())).resize(original, Image.BILINEAR).save(depth_path)
            written.append({"fg_bg": str(fg_path), "bg": str(bg_path), "mask": str(mask_path), "depth": str(depth_path)})
    return written
