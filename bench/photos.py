"""A photo benchmark that cannot be tuned on: photographs and real cut-outs from Debian packages, split by source
into a development set, on which levers are chosen, and a final set, only reported on, once a round.

  development  backgrounds: MATE's nature photographs (mate-backgrounds: 12 photographs of plants, water, sand, wood)
               foregrounds: Tux Paint's photographed stamps of animals (tuxpaint-stamps-default, stamps/animals)
  final        backgrounds: KDE Plasma's photographs (plasma-workspace-wallpapers: 11 of its wallpapers are photographs)
               foregrounds: Tux Paint's photographed stamps of everything else: food, plants, tools, vehicles, ...

A stamp is a photograph cut out with its alpha matte; only the photographic ones are kept: at least 600 distinct
colours among its opaque pixels at 128 px, and under 15% of them the same colour as their right neighbour (drawn
clip art has few colours or flat areas). Each sample pastes one stamp, 25-60% of the
image, flipped at random, onto a crop of a background photograph; the mask is its alpha. What makes two real shots
differ is there too: most objects cast a soft shadow (their own silhouette, offset and blurred, darkening what it
falls on, not in the mask), the second shot has its own exposure and white balance (±4% a channel, half of the
samples) and sensor noise, and both images are saved as JPEG with their own quality; depth is a flat placeholder (photographs have no true depth), so
only mask IoU counts. The packages are fetched with `apt-get download` at pinned versions (Debian 12) and each file
used is listed with its sha256 in the set's sources.json, with each batch's own sha256 to check a rebuild against.

    python bench/photos.py build [--out bench/out/photos] [--size 160] [--samples 400]
    python bench/photos.py score RUN_DIR [--final]     # the model's IoU and the rule's on each set
Without --final, `score` reports the development set and bench/transfer.py's photo set only: the final set is read
once a round, for the record (docs/benchmarks.md), never to choose a lever.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))

from transfer import _jpeg, write_photo_set  # noqa: E402

OUT = Path(__file__).parent / "out" / "photos"
PACKAGES = {"mate-backgrounds": "1.26.0-1", "plasma-workspace-wallpapers": "4:5.27.5-2", "tuxpaint-stamps-default": "2022.06.04-1"}
MATE = "usr/share/backgrounds/mate/nature"
PLASMA = "usr/share/wallpapers"
SETS = {  # backgrounds (package, files) and which stamps: those under stamps/animals or the others
    "development": {"backgrounds": ("mate-backgrounds", [f"{MATE}/{n}.jpg" for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm", "TwoWings",
        "Wood", "YellowFlower")]), "animals": True, "seed": 1},
    "final": {"backgrounds": ("plasma-workspace-wallpapers", [f"{PLASMA}/{n}" for n in (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Kite", "OneStandsOut",
        "Path", "Volna", "summer_1am")]), "animals": False, "seed": 2},
}
STAMPS = "usr/share/tuxpaint/stamps"
PHOTOGRAPHIC_COLOURS, FLAT = 600, 0.15
SHOTS = {"shadow": 0.7, "exposure": 0.5, "noise": 4.0}  # share of samples with a shadow, with their own exposure; noise's largest σ


def fetch(cache: Path) -> dict[str, Path]:
    """Each package unpacked under cache/NAME (downloaded once, at its pinned version)."""
    cache.mkdir(parents=True, exist_ok=True)
    roots = {}
    for name, version in PACKAGES.items():
        root = cache / name
        if not root.is_dir():
            debs = list(cache.glob(f"{name}_*.deb"))
            if not debs:
                got = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=cache, capture_output=True, text=True)
                debs = list(cache.glob(f"{name}_*.deb"))
                if got.returncode or not debs:
                    raise SystemExit(f"apt-get download {name}={version} failed (Debian 12's apt needed): {got.stderr.strip()[-300:]}")
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
        roots[name] = root
    return roots


def _largest(path: Path) -> Path:
    """A Plasma wallpaper is a folder of sizes: its largest image."""
    if path.is_file():
        return path
    return max((path / "contents" / "images").iterdir(), key=lambda p: p.stat().st_size)


def stamps(root: Path, animals: bool) -> list[Path]:
    """Tux Paint's photographed stamps (not its drawings), under stamps/animals or not, in a fixed order."""
    keep = []
    for path in sorted((root / STAMPS).rglob("*.png")):
        if (path.relative_to(root / STAMPS).parts[0] == "animals") != animals:
            continue
        full = np.asarray(Image.open(path).convert("RGBA")).astype(np.int16)
        pairs = (full[:, 1:, 3] > 250) & (full[:, :-1, 3] > 250)
        flat = ((np.abs(full[:, 1:, :3] - full[:, :-1, :3]).sum(-1) == 0) & pairs).sum() / max(pairs.sum(), 1)
        im = Image.open(path).convert("RGBA")
        im.thumbnail((128, 128))
        a = np.asarray(im)
        opaque = a[..., 3] > 250
        if opaque.sum() >= 500 and len(np.unique(a[opaque][:, :3] // 4, axis=0)) >= PHOTOGRAPHIC_COLOURS and flat < FLAT:
            keep.append(path)
    return keep


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_set(out: Path, backgrounds: list[Path], cutouts: list[Path], samples: int, size: int, seed: int) -> None:
    """One batch in the dataset layout: 20 samples a background crop, each a stamp pasted at random."""
    rng = np.random.default_rng(seed)
    bgs = [Image.open(p).convert("RGB") for p in backgrounds]
    for im in bgs:
        im.thumbnail((1024, 1024))
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / "batch1_images.zip", "w") as zf:
        for b in range(1, samples // 20 + 1):
            photo = bgs[rng.integers(len(bgs))]
            side = int(min(photo.size) * rng.uniform(0.3, 1.0))
            x, y = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
            bg = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
            zf.writestr(f"bg_jpg/bg_img_{b}.jpg", _jpeg(np.asarray(bg), 90))
            for f in range(1, 21):
                stamp = Image.open(cutouts[rng.integers(len(cutouts))]).convert("RGBA")
                stamp = stamp.crop(stamp.getbbox())
                scale = size * rng.uniform(0.25, 0.6) / max(stamp.size)
                stamp = stamp.resize((max(1, round(stamp.width * scale)), max(1, round(stamp.height * scale))), Image.LANCZOS)
                flip = int(rng.integers(2))
                if flip:
                    stamp = stamp.transpose(Image.FLIP_LEFT_RIGHT)
                px, py = int(rng.integers(0, size - stamp.width + 1)), int(rng.integers(0, size - stamp.height + 1))
                fg_bg = np.asarray(bg, np.float32)
                if rng.random() < SHOTS["shadow"]:  # a shadow: the silhouette moved aside and down, blurred, darkening the scene
                    dx, dy = int(stamp.width * rng.uniform(-0.15, 0.15)), int(stamp.height * rng.uniform(0.02, 0.1))
                    shade = Image.new("L", (size, size), 0)
                    shade.paste(stamp.getchannel("A"), (px + dx, py + dy))
                    shade = np.asarray(shade.filter(ImageFilter.GaussianBlur(max(1.0, stamp.height / 12))), np.float32) / 255
                    fg_bg *= 1 - rng.uniform(0.2, 0.5) * shade[..., None]
                alpha = np.zeros((size, size, 1), np.float32)
                alpha[py : py + stamp.height, px : px + stamp.width, 0] = np.asarray(stamp.getchannel("A"), np.float32) / 255
                pasted = np.zeros((size, size, 3), np.float32)
                pasted[py : py + stamp.height, px : px + stamp.width] = np.asarray(stamp.convert("RGB"), np.float32)
                fg_bg = fg_bg * (1 - alpha) + pasted * alpha
                if rng.random() < SHOTS["exposure"]:  # the second shot's own exposure and white balance
                    fg_bg *= rng.uniform(0.96, 1.04, 3)
                fg_bg += rng.standard_normal(fg_bg.shape) * rng.uniform(0.0, SHOTS["noise"])  # its sensor noise
                mask = Image.new("L", (size, size), 0)
                mask.paste(stamp.getchannel("A"), (px, py))
                key = f"{f}_{b}_{flip}_1"
                zf.writestr(f"fg_bg_jpg/fg_bg_{key}.jpg", _jpeg(np.clip(fg_bg, 0, 255).astype(np.uint8), int(rng.integers(80, 96))))
                zf.writestr(f"mask_black_jpg/bg_mask_{key}.jpg", _jpeg(np.asarray(mask)))
                zf.writestr(f"depth_fg_bg_jpg/depth_fg_bg_{key}.jpg", _jpeg(np.full((size // 2, size // 2), 128, np.uint8)))


def build(out: Path, size: int, samples: int) -> dict:
    roots = fetch(out / "debs")
    record = {"packages": PACKAGES, "size": size, "samples": samples, "sets": {}}
    for name, spec in SETS.items():
        package, files = spec["backgrounds"]
        backgrounds = [_largest(roots[package] / f) for f in files]
        cutouts = stamps(roots["tuxpaint-stamps-default"], spec["animals"])
        write_set(out / name, backgrounds, cutouts, samples, size, spec["seed"])
        record["sets"][name] = {"backgrounds": {str(p.relative_to(roots[package])): _sha(p) for p in backgrounds},
                                "cutouts": {str(p.relative_to(roots["tuxpaint-stamps-default"])): _sha(p) for p in cutouts},
                                "batch_sha256": _sha(out / name / "batch1_images.zip")}
        print(f"{name}: {samples} samples, {len(backgrounds)} backgrounds, {len(cutouts)} cut-outs -> {out / name}", flush=True)
    transfer = out / "transfer"  # bench/transfer.py's photo set at the same size: its rows stay comparable with the past
    if not transfer.exists():
        write_photo_set(transfer, samples, size)
    (out / "sources.json").write_text(json.dumps(record, indent=1))
    return record


def score(run: str, out: Path, final: bool) -> dict:
    from fgbg.evaluate import evaluate

    names = ["development", "transfer"] + (["final"] if final else [])
    rows = {}
    for name in names:
        r = evaluate(run, str(out / name), split="all", out=str(out / "eval" / Path(run).name / name))
        rows[name] = {"iou": round(r["iou"], 4), "rule_iou": round(r["baseline_iou"], 4), "margin": round(r["iou"] - r["baseline_iou"], 4),
                      "samples": r["samples"]}
    print(f"{'set':<14}{'model IoU':>10}{'rule IoU':>10}{'margin':>9}")
    for name, r in rows.items():
        print(f"{name:<14}{r['iou']:>10.3f}{r['rule_iou']:>10.3f}{r['margin']:>+9.3f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=str(OUT))
    b.add_argument("--size", type=int, default=160)
    b.add_argument("--samples", type=int, default=400)
    s = sub.add_parser("score")
    s.add_argument("run", help="a training run's directory (or checkpoint)")
    s.add_argument("--out", default=str(OUT))
    s.add_argument("--final", action="store_true", help="also the final set: once a round, for the record")
    args = ap.parse_args()
    if args.cmd == "build":
        build(Path(args.out), args.size, args.samples)
    else:
        rows = score(args.run, Path(args.out), args.final)
        results = Path(args.out) / "scores.json"
        past = json.loads(results.read_text()) if results.is_file() else {}
        past[str(Path(args.run).resolve())] = rows
        results.write_text(json.dumps(past, indent=1))


if __name__ == "__main__":
    main()
