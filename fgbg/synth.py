"""`fgbg synth`: a synthetic dataset in the original layout, made to look like photographs.

Each background is an outdoor or indoor scene: a sky or wall above a horizon, a textured ground
plane receding to it in perspective, far structures and clutter that appear in both images (so a
model must compare fg_bg with bg, not just find the salient thing). Each foreground is an object
with its own shape (figure, animal, plant, blob, polygon, box …), texture and shading; it stands
on the ground, scaled by perspective, with a soft edge and a contact shadow, and half of them also
throw their own shape's shadow across the ground (no shadow is in the mask). Some foregrounds
are tinted towards the colours around them. Depth: brighter = nearer; the sky is farthest, the
ground nears towards the bottom, an object is as near as the ground it stands on. Everything comes from the seed: the same command writes the same bytes.
"""

from __future__ import annotations

import math
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import FgbgError
from .layout import FOLDERS
from .scenes import Scene, blur, crop_resized, encode_jpeg, make_foreground, make_scene, paste, resize_rgba, rng_for, to_uint8

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same seed gives the same zip bytes


@dataclass(frozen=True)
class SynthSpec:
    """What `fgbg synth` writes; the grid is the original's: F foregrounds × B backgrounds × 2 flips × P positions."""

    out: str
    batches: int = 4
    per_batch: int = 1000
    size: int = 160
    seed: int = 0
    format: str = "zip"
    foregrounds: int = 100
    backgrounds_per_batch: int = 10
    positions: int = 20
    picture_textures: float = 0.3  # share of objects textured with a crop of a picture instead of a drawn pattern
    scene_textures: float = 0.15  # share of samples whose object wears a crop of the scene it stands in
    cast_shadows: float = 0.5  # share of samples whose object also casts its own shape's shadow on the ground


# ---------------------------------------------------------------- samples


@lru_cache(maxsize=16)
def _cached_scene(seed: int, bg_id: int, size: int) -> Scene:
    return make_scene(seed, bg_id, size)


def render_sample(seed: int, fg_id: int, bg_id: int, flip: int, pos: int, size: int, picture_textures: float = SynthSpec.picture_textures,
                  scene_textures: float = SynthSpec.scene_textures, cast_shadows: float = SynthSpec.cast_shadows) -> dict[str, np.ndarray]:
    """fg_bg, mask (H×W uint8) and depth (H/2×W/2 uint8) for one sample of the grid (the shares: SynthSpec's)."""
    base = _cached_scene(seed, bg_id, size)
    scene = Scene(base.image.copy(), base.depth.copy(), base.horizon)
    rng = rng_for(seed, 3, fg_id, bg_id, flip, pos)
    pick = rng_for(seed, 9, fg_id, bg_id, flip, pos)  # the scene-texture draws, apart: with 0, samples are as before
    obj = make_foreground(seed, fg_id, size, picture_textures)
    if flip:
        obj = obj[:, ::-1]
    H = W = size
    foot = float(rng.uniform(scene.horizon + 0.08 * (H - scene.horizon), H + 0.05 * H))
    scale = (0.35 + 0.75 * (foot - scene.horizon) / max(H - scene.horizon, 1)) * rng.uniform(0.8, 1.15)
    w, h = max(3, int(obj.shape[1] * scale)), max(3, int(obj.shape[0] * scale))
    obj = resize_rgba(obj, w, h)
    x0 = int(rng.integers(-w // 4, W - 3 * w // 4))
    y0 = int(foot) - h
    if pick.random() < scene_textures:  # texture camouflage: the object wears a crop of the scene it stands in
        obj[..., :3] = np.clip(crop_resized(pick, base.image, w, h) * float(pick.uniform(0.85, 1.15)), 0, 1)
    if rng.random() < 0.3:  # camouflage: tint the object towards the colours around it
        ys, xs = slice(max(y0, 0), max(min(y0 + h, H), max(y0, 0) + 1)), slice(max(x0, 0), max(min(x0 + w, W), max(x0, 0) + 1))
        around = scene.image[ys, xs].reshape(-1, 3).mean(axis=0)
        k = float(rng.uniform(0.4, 0.8))
        obj[..., :3] = obj[..., :3] * (1 - k) + around * k * (0.8 + 0.4 * obj[..., :3].mean(-1, keepdims=True))
    obj[..., 3] = blur(obj[..., 3], float(rng.uniform(0.3, 1.0)))
    # contact shadow on the ground: darker ground, not part of the mask
    sw, sh = int(w * rng.uniform(0.7, 1.3)), max(2, int(h * 0.12))
    shadow = Image.new("L", (sw * 2, sh * 2), 0)
    ImageDraw.Draw(shadow).ellipse([sw / 2, sh / 2, sw * 1.5, sh * 1.5], fill=int(255 * rng.uniform(0.25, 0.6)))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(sh / 2)), np.float32) / 255.0
    sx0, sy0 = x0 + w // 2 - sw + int(rng.integers(-w // 6 - 1, w // 6 + 1)), int(foot) - sh
    dark = np.zeros((*shadow.shape, 4), np.float32)
    dark[..., 3] = shadow
    paste(scene, dark, sx0, sy0, None)
    cast = rng_for(seed, 10, fg_id, bg_id, flip, pos)  # its own draws: with cast_shadows 0, samples are those of before it
    if cast.random() < cast_shadows:
        _cast_shadow(scene, cast, obj[..., 3], x0, int(foot))
    # the object: as near as the ground under it, a little nearer in its middle (it is round)
    ground = scene.ground_depth(foot)
    bulge = blur(obj[..., 3], max(1.0, w / 5))
    obj_depth = np.clip(ground + 0.08 * bulge * (0.5 + ground), 0, 1)
    alpha = paste(scene, obj, x0, y0, obj_depth)
    image = scene.image + rng.standard_normal(scene.image.shape, dtype=np.float32) * float(rng.uniform(0.0, 0.015))  # sensor noise
    depth = Image.fromarray(to_uint8(scene.depth)).resize((size // 2, size // 2), Image.BILINEAR)
    return {"fg_bg": to_uint8(image), "mask": to_uint8(alpha), "depth": np.asarray(depth)}


def _cast_shadow(scene: Scene, rng: np.random.Generator, alpha: np.ndarray, x0: int, foot: int) -> None:
    """The object's silhouette laid on the ground from its foot, as a low sun throws it: squashed to 15–70% of
    its height, sheared sideways, away from the camera or towards it, blurred, darkening the ground ×0.5–0.8.
    Not part of the mask: what changed between the two shots there is light, not an object."""
    h, w = alpha.shape
    sh = max(2, int(h * rng.uniform(0.15, 0.7)))
    shear = float(rng.uniform(-1.5, 1.5))
    sil = Image.fromarray(to_uint8(alpha)).resize((w, sh), Image.BILINEAR)
    left = min(0.0, shear * (sh - 1))  # where the sheared shape starts, left of the object's own x0
    width = w + int(abs(shear) * sh) + 2
    # output (x, y) takes input (x + left - shear·(sh-1-y), y): the foot row (y = sh-1) stays under the object
    sil = sil.transform((width, sh), Image.AFFINE, (1, shear, left - shear * (sh - 1), 0, 1, 0), Image.BILINEAR)
    towards_camera = rng.random() < 0.5
    if towards_camera:
        sil = sil.transpose(Image.FLIP_TOP_BOTTOM)
    sil = sil.filter(ImageFilter.GaussianBlur(max(1.0, sh / 10)))
    dark = np.zeros((sh, width, 4), np.float32)
    dark[..., 3] = np.asarray(sil, np.float32) / 255 * float(rng.uniform(0.2, 0.5))
    paste(scene, dark, x0 + int(left), foot - 1 if towards_camera else foot - sh + 1, None)


# ---------------------------------------------------------------- the dataset writer


def sample_grid(spec: SynthSpec, batch: int) -> list[tuple[int, int, int, int]]:
    """The (F, B, FLIP, POS) of a batch: per_batch of the batch's grid, drawn evenly by the seed."""
    per_bg = spec.foregrounds * 2 * spec.positions
    n_bg = max(spec.backgrounds_per_batch, math.ceil(spec.per_batch / per_bg))
    first_bg = (batch - 1) * n_bg + 1
    total = n_bg * per_bg
    picks = np.sort(rng_for(spec.seed, 4, batch).choice(total, size=spec.per_batch, replace=False))
    grid = []
    for i in picks.tolist():
        b, rest = divmod(i, per_bg)
        f, rest = divmod(rest, 2 * spec.positions)
        flip, pos = divmod(rest, spec.positions)
        grid.append((f + 1, first_bg + b, flip, pos + 1))
    return grid


def _render_chunk(spec: SynthSpec, items: list[tuple[int, int, int, int]], bgs: list[int]) -> list[tuple[str, bytes]]:
    files = []
    for bg_id in bgs:
        scene = _cached_scene(spec.seed, bg_id, spec.size)
        files.append((f"{FOLDERS['bg']}/bg_img_{bg_id}.jpg", encode_jpeg(to_uint8(scene.image), 90)))
    for f, b, flip, pos in items:
        key = f"{f}_{b}_{flip}_{pos}"
        s = render_sample(spec.seed, f, b, flip, pos, spec.size, spec.picture_textures, spec.scene_textures, spec.cast_shadows)
        quality = int(rng_for(spec.seed, 5, f, b, flip, pos).integers(75, 96))
        files.append((f"{FOLDERS['fg_bg']}/fg_bg_{key}.jpg", encode_jpeg(s["fg_bg"], quality)))
        files.append((f"{FOLDERS['mask']}/bg_mask_{key}.jpg", encode_jpeg(s["mask"], 90)))
        files.append((f"{FOLDERS['depth']}/depth_fg_bg_{key}.jpg", encode_jpeg(s["depth"], 90)))
    return files


def _chunks(spec: SynthSpec, chunk: int = 200):
    for batch in range(1, spec.batches + 1):
        grid = sample_grid(spec, batch)
        # samples sorted by background, so each chunk renders few scenes; a background's image is
        # written by the chunk that first uses it
        seen: set[int] = set()
        for i in range(0, len(grid), chunk):
            items = grid[i : i + chunk]
            bgs = sorted({b for _, b, _, _ in items} - seen)
            seen.update(bgs)
            yield batch, items, bgs


def write_dataset(spec: SynthSpec, workers: int | None = None, progress: bool = False) -> Path:
    """Write the dataset; workers=0 renders in this process. Returns the dataset root."""
    if spec.format not in ("zip", "dir"):
        raise FgbgError(f"--format must be zip or dir, not {spec.format!r}")
    if spec.size < 16 or spec.size % 2:
        raise FgbgError(f"--size must be an even number of pixels ≥ 16, not {spec.size}")
    if spec.batches < 1 or spec.per_batch < 1:
        raise FgbgError("--batches and --per-batch must be at least 1")
    for name in ("picture_textures", "scene_textures", "cast_shadows"):
        if not 0 <= getattr(spec, name) <= 1:
            raise FgbgError(f"--{name.replace('_', '-')} must be a share from 0 to 1, not {getattr(spec, name)}")
    root = Path(spec.out)
    root.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = os.cpu_count() or 1
    jobs = list(_chunks(spec))
    bar = None
    if progress:
        from .progress import Meter

        bar = Meter(spec.batches * spec.per_batch, "synth")
    writers: dict[int, object] = {}
    pool = ProcessPoolExecutor(workers, mp_context=get_context("fork")) if workers > 0 else None
    try:
        results = (
            pool.map(_render_chunk, *zip(*[(spec, items, bgs) for _, items, bgs in jobs]))
            if pool
            else (_render_chunk(spec, items, bgs) for _, items, bgs in jobs)
        )
        for (batch, items, _), files in zip(jobs, results):
            if batch not in writers:
                for w in writers.values():
                    w.close()
                writers = {batch: _BatchWriter(root, batch, spec.format)}
            writers[batch].write(files)
            if bar:
                bar.update(len(items))
    finally:
        for w in writers.values():
            w.close()
        if pool:
            pool.shutdown()
        if bar:
            bar.close()
    return root


class _BatchWriter:
    """Writes one batch: a zip (stored, fixed timestamps: same bytes each time) or a folder."""

    def __init__(self, root: Path, batch: int, fmt: str):
        self.zip = None
        if fmt == "zip":
            self.path = root / f"batch{batch}_images.zip"
            self.tmp = self.path.with_suffix(".zip.partial")
            self.zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED)
        else:
            self.path = root / f"batch{batch}"
            for folder in FOLDERS.values():
                (self.path / folder).mkdir(parents=True, exist_ok=True)

    def write(self, files: list[tuple[str, bytes]]) -> None:
        for name, data in files:
            if self.zip:
                self.zip.writestr(zipfile.ZipInfo(name, ZIP_DATE), data)
            else:
                (self.path / name).write_bytes(data)

    def close(self) -> None:
        if self.zip:
            self.zip.close()
            os.replace(self.tmp, self.path)  # a killed synth never leaves a half zip under the real name
            self.zip = None
