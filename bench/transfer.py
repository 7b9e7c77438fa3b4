"""Does a model trained on `fgbg synth` find foregrounds in photographs?

Builds a photo set in the dataset layout from the photographs that scikit-image and matplotlib
ship (backgrounds: crops of astronaut, cat, coffee, rocket, motorcycle, Grace Hopper, Hubble
field, grass, gravel, brick; foregrounds: a real horse silhouette, coins cut out of their photo,
the cat's head, ellipses and blobs, all textured with crops of a different photograph). Then it
trains the same model, with the same budget, on two synthetic sets, `fgbg synth` and a naive one
(flat colours, plain shapes), and evaluates both on each set's test split and on the photos.
The photos have no true depth, so only mask IoU is compared there.
    pip install scikit-image    # bench only (`make bench` installs it)
    python bench/transfer.py [--size 64] [--per-batch 1000] [--epochs 8]
Prints a table and writes bench/out/transfer.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OUT = Path(__file__).parent / "out"


def _jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _photos() -> list[np.ndarray]:
    import matplotlib.cbook
    from skimage import data

    rgb = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field(), data.stereo_motorcycle()[0]]
    rgb.append(np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")))
    for gray, tint in ((data.grass(), (0.7, 1.0, 0.6)), (data.gravel(), (1.0, 0.95, 0.85)), (data.brick(), (1.0, 0.7, 0.6))):
        rgb.append(np.clip(np.stack([gray * t for t in tint], -1), 0, 255).astype(np.uint8))
    return rgb


def _silhouettes() -> list[np.ndarray]:
    """Real object shapes: the horse, each coin of the coins photo, the cat's head."""
    from scipy import ndimage
    from skimage import data

    shapes = [data.horse() == 0]
    coins = data.coins()
    labels, n = ndimage.label(ndimage.binary_fill_holes(coins > 110))
    for i in range(1, n + 1):
        ys, xs = np.nonzero(labels == i)
        if len(ys) > 800:
            shapes.append(labels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == i)
    head = Image.new("L", (140, 120), 0)
    ImageDraw.Draw(head).ellipse([0, 0, 139, 119], fill=255)
    shapes.append(np.asarray(head) > 0)
    return shapes


def _crop(rng, photo: np.ndarray, size: int, min_frac: float = 0.3) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(min_frac, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return np.asarray(Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR))


def write_photo_set(root: Path, samples: int, size: int, seed: int = 0) -> Path:
    """One batch of photographic composites in the dataset layout (depth is a flat placeholder)."""
    rng = np.random.default_rng(seed)
    photos, shapes = _photos(), _silhouettes()
    chelsea = photos[1]
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "batch1_images.zip", "w") as zf:
        n_bg = max(1, samples // 20)
        for b in range(1, n_bg + 1):
            bg = _crop(rng, photos[rng.integers(len(photos))], size)
            zf.writestr(f"bg_jpg/bg_img_{b}.jpg", _jpeg(bg))
            for f in range(1, 21):
                kind = rng.integers(len(shapes) + 2)
                side = int(size * rng.uniform(0.2, 0.5))
                if kind < len(shapes):
                    shape = Image.fromarray(shapes[kind].astype(np.uint8) * 255)
                    if kind == len(shapes) - 1:  # the cat's head, with its own photograph
                        texture = np.asarray(Image.fromarray(chelsea[30:150, 150:290]).resize((side, side)))
                    else:
                        texture = _crop(rng, photos[rng.integers(len(photos))], side, 0.1)
                else:  # an ellipse or a blob, textured with a photograph
                    shape = Image.new("L", (100, 100), 0)
                    d = ImageDraw.Draw(shape)
                    if kind == len(shapes):
                        d.ellipse([0, int(rng.integers(0, 40)), 99, 99], fill=255)
                    else:
                        for _ in range(5):
                            r, cx, cy = rng.integers(15, 35), rng.integers(25, 75), rng.integers(25, 75)
                            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
                    texture = _crop(rng, photos[rng.integers(len(photos))], side, 0.1)
                alpha = np.asarray(shape.resize((side, side), Image.BILINEAR).filter(ImageFilter.GaussianBlur(0.7)), np.float32)[..., None] / 255
                x, y = rng.integers(0, size - side + 1), rng.integers(0, size - side + 1)
                flip = int(rng.integers(2))
                if flip:
                    alpha, texture = alpha[:, ::-1], texture[:, ::-1]
                fg_bg = bg.astype(np.float32)
                fg_bg[y : y + side, x : x + side] = fg_bg[y : y + side, x : x + side] * (1 - alpha) + texture * alpha
                mask = np.zeros((size, size), np.uint8)
                mask[y : y + side, x : x + side] = (alpha[..., 0] * 255).astype(np.uint8)
                key = f"{f}_{b}_{flip}_1"
                zf.writestr(f"fg_bg_jpg/fg_bg_{key}.jpg", _jpeg(np.clip(fg_bg, 0, 255).astype(np.uint8), int(rng.integers(80, 96))))
                zf.writestr(f"mask_black_jpg/bg_mask_{key}.jpg", _jpeg(mask))
                zf.writestr(f"depth_fg_bg_jpg/depth_fg_bg_{key}.jpg", _jpeg(np.full((size // 2, size // 2), 128, np.uint8)))
    return root


def write_naive_set(root: Path, batches: int, per_batch: int, size: int, seed: int = 0) -> Path:
    """The easy way to fake the data: flat backgrounds, flat-coloured ellipses and boxes, a vertical depth ramp."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ramp = np.tile(np.linspace(40, 255, size // 2).astype(np.uint8)[:, None], (1, size // 2))
    for k in range(1, batches + 1):
        with zipfile.ZipFile(root / f"batch{k}_images.zip", "w") as zf:
            for b in range(1, per_batch // 40 + 1):
                bg_id = (k - 1) * 1000 + b
                bg = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
                zf.writestr(f"bg_jpg/bg_img_{bg_id}.jpg", _jpeg(np.asarray(bg)))
                for f in range(1, 41):
                    img, mask = bg.copy(), Image.new("L", (size, size), 0)
                    side = int(size * rng.uniform(0.2, 0.5))
                    x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
                    box = [x, y, x + side, y + int(side * rng.uniform(0.6, 1.4))]
                    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                    draw = ImageDraw.Draw(img).ellipse if rng.random() < 0.5 else ImageDraw.Draw(img).rectangle
                    draw(box, fill=colour)
                    (ImageDraw.Draw(mask).ellipse if draw.__name__ == "ellipse" else ImageDraw.Draw(mask).rectangle)(box, fill=255)
                    depth = ramp.copy()
                    depth[np.asarray(mask.resize((size // 2, size // 2))) > 127] = 230
                    key = f"{f}_{bg_id}_0_1"
                    zf.writestr(f"fg_bg_jpg/fg_bg_{key}.jpg", _jpeg(np.asarray(img)))
                    zf.writestr(f"mask_black_jpg/bg_mask_{key}.jpg", _jpeg(np.asarray(mask)))
                    zf.writestr(f"depth_fg_bg_jpg/depth_fg_bg_{key}.jpg", _jpeg(depth))
    return root


def difference_baseline(root: Path, size: int) -> float:
    """Mean per-image IoU of the threshold rule (fgbg.metrics.threshold_mask) over a whole set: what no learning gives."""
    import torch

    from fgbg.layout import load_manifest
    from fgbg.metrics import threshold_iou
    from fgbg.reader import decode_table

    out = {k: torch.from_numpy(v) for k, v in decode_table(load_manifest(root).with_paths(), size).items()}
    return threshold_iou(out["fg_bg"], out["bg"], out["mask"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-batch", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--photos", type=int, default=400)
    args = ap.parse_args()

    from fgbg.config import Config
    from fgbg.evaluate import evaluate
    from fgbg.synth import SynthSpec, write_dataset
    from fgbg.train import fit

    work = OUT / f"transfer-{args.size}-{args.per_batch}"
    sets = {
        "fgbg synth": work / "synth",
        "naive synthetic": work / "naive",
        "photographs": work / "photos",
    }
    if not sets["fgbg synth"].exists():
        write_dataset(SynthSpec(str(sets["fgbg synth"]), batches=args.batches, per_batch=args.per_batch, size=args.size, seed=11))
    if not sets["naive synthetic"].exists():
        write_naive_set(sets["naive synthetic"], args.batches, args.per_batch, args.size)
    if not sets["photographs"].exists():
        write_photo_set(sets["photographs"], args.photos, args.size)

    results = {"config": vars(args), "trained_on": {}}
    for name in ("fgbg synth", "naive synthetic"):
        cfg = Config(data=str(sets[name]), out=str(work / "runs"), name=name.replace(" ", "-"), size=args.size, epochs=args.epochs,
                     workers=args.workers, batch_size=16, log_every=50)
        fit(cfg)
        row = {}
        for target, root in sets.items():
            split = "all" if target == "photographs" else "test"
            r = evaluate(cfg.run_dir, root, split=split, out=work / "eval" / f"{cfg.name}-on-{target.replace(' ', '-')}")
            row[target] = {k: round(r[k], 4) for k in ("iou", "iou_flat", "ssim")} | {"samples": r["samples"]}
        results["trained_on"][name] = row
    results["difference_baseline_iou"] = {t: round(difference_baseline(root, args.size), 4) for t, root in sets.items()}

    print(f"{'trained on':<18}" + "".join(f"{'IoU on ' + t:>26}" for t in sets))
    for name, row in results["trained_on"].items():
        print(f"{name:<18}" + "".join(f"{row[t]['iou']:>26.3f}" for t in sets))
    print(f"{'|fg_bg-bg| > 0.1':<18}" + "".join(f"{results['difference_baseline_iou'][t]:>26.3f}" for t in sets))
    OUT.mkdir(exist_ok=True)
    (OUT / "transfer.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
