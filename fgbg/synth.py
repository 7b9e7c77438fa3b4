"""`fgbg synth`: a synthetic dataset in the original layout, made to look like photographs.

Each background is an outdoor or indoor scene: a sky or wall above a horizon, a textured ground
plane receding to it in perspective, far structures and clutter that appear in both images (so a
model must compare fg_bg with bg, not just find the salient thing). Each foreground is an object
with its own shape (figure, animal, plant, blob, polygon, box …), texture and shading; it stands
on the ground, scaled by perspective, with a soft edge and a contact shadow (the shadow is not in
the mask). Some foregrounds are tinted towards the colours around them. Depth: brighter = nearer;
the sky is farthest, the ground nears towards the bottom, an object is as near as the ground it
stands on. Everything comes from the seed: the same command writes the same bytes.
"""

from __future__ import annotations

import io
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


# ---------------------------------------------------------------- small image helpers


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _noise(rng: np.random.Generator, h: int, w: int, octaves: int = 4, base: int = 3, persistence: float = 0.55) -> np.ndarray:
    """Multi-scale value noise in [0, 1]: random grids of growing resolution, upsampled and summed."""
    total = np.zeros((h, w), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
        total += amp * np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC))
        norm += amp
        amp *= persistence
    total /= norm
    lo, hi = total.min(), total.max()
    return (total - lo) / (hi - lo + 1e-6)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _palette_colour(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A colour drawn from the ranges photographs have: skies, walls, grass, earth, or anything."""
    ranges = {
        "sky": ((0.53, 0.65), (0.15, 0.6), (0.65, 1.0)),
        "dusk": ((0.0, 0.12), (0.3, 0.7), (0.6, 1.0)),
        "wall": ((0.0, 1.0), (0.0, 0.3), (0.45, 0.95)),
        "grass": ((0.2, 0.38), (0.35, 0.8), (0.25, 0.7)),
        "earth": ((0.05, 0.12), (0.25, 0.7), (0.3, 0.8)),
        "stone": ((0.0, 1.0), (0.0, 0.15), (0.3, 0.8)),
        "any": ((0.0, 1.0), (0.2, 1.0), (0.2, 1.0)),
    }[kind]
    return _hsv(*(float(rng.uniform(*r)) for r in ranges))


def _encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a [0, 1] float map (through 8 bits: PIL blurs only integer images)."""
    return np.asarray(Image.fromarray(_to_uint8(a)).filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


# ---------------------------------------------------------------- backgrounds


@dataclass
class Scene:
    """A background: its image (H×W×3 float), its depth (H×W, brighter = nearer) and its horizon row."""

    image: np.ndarray
    depth: np.ndarray
    horizon: int

    def ground_depth(self, row):
        """Depth of the ground at a row (a number, or an array of rows): far at the horizon, near at the bottom."""
        h = self.image.shape[0]
        t = np.clip((row - self.horizon) / max(h - self.horizon, 1), 0.0, 1.0)
        depth = 0.18 + 0.82 * t**0.8
        return float(depth) if np.ndim(depth) == 0 else depth


def make_scene(seed: int, bg_id: int, size: int) -> Scene:
    """One background scene, from (seed, bg_id) alone."""
    rng = _rng(seed, 1, bg_id)
    H = W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    horizon = int(H * rng.uniform(0.22, 0.62))
    indoor = rng.random() < 0.35

    # far region: sky gradient outdoors, a wall indoors
    top = _palette_colour(rng, "wall" if indoor else ("dusk" if rng.random() < 0.2 else "sky"))
    bottom = np.clip(top * rng.uniform(0.8, 1.25) + rng.normal(0, 0.06, 3), 0, 1).astype(np.float32)
    t = (yy / max(horizon, 1)).clip(0, 1)[..., None]
    image = top * (1 - t) + bottom * t
    image += (_noise(rng, H, W, octaves=3, base=2) - 0.5)[..., None] * (0.08 if indoor else 0.12)
    depth = np.zeros((H, W), np.float32)

    # ground plane in perspective: texture coordinates (u, v) = ((x - cx) / dy, 1 / dy)
    dy = np.maximum(yy - horizon, 0.5)
    u = (xx - W / 2) / dy
    v = H / dy
    ground_colour = _palette_colour(rng, "stone" if indoor else str(rng.choice(["grass", "earth", "stone"])))
    tex = _noise(rng, H, W, octaves=5, base=4)
    pattern = rng.choice(["plain", "stripes", "tiles", "rows"])
    freq = rng.uniform(1.5, 5.0)
    if pattern == "stripes":
        tex = 0.6 * tex + 0.4 * (0.5 + 0.5 * np.sin(u * freq * 2))
    elif pattern == "tiles":
        tex = 0.6 * tex + 0.4 * ((np.floor(u * freq) + np.floor(v * freq / 4)) % 2)
    elif pattern == "rows":
        tex = 0.6 * tex + 0.4 * (0.5 + 0.5 * np.sin(v * freq))
    # fine detail mapped through the perspective (pebbles, grass blades, grain), hazy at the horizon
    n = 64
    detail_map = _noise(rng, n, n, octaves=3, base=8)
    detail = detail_map[(v * rng.uniform(1, 3)).astype(np.int64) % n, (u * rng.uniform(4, 10)).astype(np.int64) % n]
    tex = 0.75 * tex + 0.25 * detail
    ground = ground_colour * (0.65 + 0.6 * tex[..., None])
    haze = np.exp(-(yy - horizon).clip(0) / (0.15 * H))[..., None] * 0.35  # distance haze near the horizon
    ground = ground * (1 - haze) + bottom * haze
    is_ground = yy >= horizon
    image = np.where(is_ground[..., None], ground, image)
    scene = Scene(image.astype(np.float32), depth, horizon)
    scene.depth = np.where(is_ground, scene.ground_depth(yy), 0.0).astype(np.float32)

    # far structures on the horizon: buildings, hills, tree lines (indoors: furniture, frames)
    for _ in range(int(rng.integers(1, 6))):
        _far_structure(rng, scene, indoor)
    # clutter standing on the ground, in both images
    for _ in range(int(rng.integers(0, 4))):
        _clutter(rng, scene)
    # lighting: a soft gradient across the frame and a vignette
    angle = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0.0, 0.25) * ((xx / W - 0.5) * math.cos(angle) + (yy / H - 0.5) * math.sin(angle))
    vignette = 1 - rng.uniform(0.0, 0.3) * (((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / (W * W / 2))
    scene.image = (scene.image * (light * vignette)[..., None]).astype(np.float32)
    return scene


def _paste(scene: Scene, rgba: np.ndarray, x0: int, y0: int, depth_value: np.ndarray | float | None) -> np.ndarray:
    """Alpha-blend an RGBA float patch into the scene at (x0, y0) and write its depth (unless None, as for
    a shadow); returns alpha on the frame."""
    H, W = scene.depth.shape
    h, w = rgba.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + h, H)), slice(max(x0, 0), min(x0 + w, W))
    py, px = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
    frame_alpha = np.zeros((H, W), np.float32)
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return frame_alpha
    a = rgba[py, px, 3:4]
    scene.image[ys, xs] = scene.image[ys, xs] * (1 - a) + rgba[py, px, :3] * a
    if depth_value is not None:
        d = depth_value[py, px] if isinstance(depth_value, np.ndarray) else depth_value
        scene.depth[ys, xs] = np.where(a[..., 0] > 0.5, d, scene.depth[ys, xs])
    frame_alpha[ys, xs] = a[..., 0]
    return frame_alpha


def _far_structure(rng: np.random.Generator, scene: Scene, indoor: bool) -> None:
    H, W = scene.depth.shape
    kind = rng.choice(["box", "hill", "trees"]) if not indoor else "box"
    colour = _palette_colour(rng, "stone" if kind == "box" else "grass")
    w = int(W * rng.uniform(0.1, 0.6))
    h = int(max(scene.horizon, 4) * rng.uniform(0.2, 0.9))
    alpha = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(alpha)
    if kind == "box":
        draw.rectangle([0, int(h * rng.uniform(0, 0.3)), w, h], fill=255)
    elif kind == "hill":
        draw.ellipse([0, 0, w, 2 * h], fill=255)
    else:
        for _ in range(int(rng.integers(3, 9))):
            r = int(rng.integers(3, max(4, w // 3)))
            cx = int(rng.integers(0, w))
            draw.ellipse([cx - r, h - 2 * r - int(rng.integers(0, h // 2 + 1)), cx + r, h], fill=255)
    a = np.asarray(alpha, np.float32) / 255.0
    tex = _noise(rng, h, w, octaves=3, base=2)
    rgb = colour * (0.7 + 0.5 * tex[..., None])
    if kind == "box" and rng.random() < 0.6:  # windows or panels
        yy, xx = np.mgrid[0:h, 0:w]
        step = int(rng.integers(5, 12))
        win = ((yy % step) < step // 2) & ((xx % step) < step // 2)
        rgb = np.where(win[..., None], rgb * 0.55, rgb)
    rgba = np.concatenate([rgb, a[..., None]], axis=-1).astype(np.float32)
    x0 = int(rng.integers(-w // 3, W - 2 * w // 3))
    _paste(scene, rgba, x0, scene.horizon - h + 1, float(rng.uniform(0.06, 0.16)))


def _clutter(rng: np.random.Generator, scene: Scene) -> None:
    H, W = scene.depth.shape
    foot = float(rng.uniform(scene.horizon + 2, H + 4))
    shape = _object_alpha(rng, int(10 + 30 * rng.random()))
    scale = 0.3 + 0.9 * (foot - scene.horizon) / max(H - scene.horizon, 1)
    rgba = _shade(rng, shape, _palette_colour(rng, "any"))
    rgba = _resize_rgba(rgba, max(2, int(rgba.shape[1] * scale)), max(2, int(rgba.shape[0] * scale)))
    x0 = int(rng.integers(-rgba.shape[1] // 2, W - rgba.shape[1] // 2))
    _paste(scene, rgba, x0, int(foot) - rgba.shape[0], scene.ground_depth(foot))


# ---------------------------------------------------------------- foregrounds


def _object_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """The silhouette of an object (float alpha, antialiased), about size pixels tall."""
    kind = rng.choice(["figure", "animal", "plant", "blob", "polygon", "ellipse", "box", "star"])
    ss = 4  # supersampling for antialiased edges
    h = size * ss
    w = int(h * rng.uniform(0.35, 1.3)) if kind not in ("figure",) else int(h * rng.uniform(0.3, 0.5))
    img = Image.new("L", (max(w, 8), h), 0)
    d = ImageDraw.Draw(img)
    w = img.size[0]
    if kind == "figure":  # a head, a body, two legs
        head = w * 0.3
        d.ellipse([w / 2 - head, 0, w / 2 + head, 2 * head], fill=255)
        d.rounded_rectangle([w * 0.12, 1.8 * head, w * 0.88, h * 0.62], radius=w * 0.15, fill=255)
        d.rectangle([w * 0.2, h * 0.55, w * 0.45, h], fill=255)
        d.rectangle([w * 0.55, h * 0.55, w * 0.8, h], fill=255)
    elif kind == "animal":  # a body, a head, four legs
        d.ellipse([w * 0.1, h * 0.25, w * 0.85, h * 0.7], fill=255)
        d.ellipse([w * 0.65, h * 0.05, w * 1.0, h * 0.4], fill=255)
        for lx in (0.15, 0.3, 0.6, 0.72):
            d.rectangle([w * lx, h * 0.55, w * (lx + 0.08), h], fill=255)
    elif kind == "plant":  # a trunk and a crown of leaves
        d.rectangle([w * 0.44, h * 0.45, w * 0.56, h], fill=255)
        for _ in range(int(rng.integers(4, 9))):
            r = w * rng.uniform(0.15, 0.35)
            cx, cy = w * rng.uniform(0.25, 0.75), h * rng.uniform(0.15, 0.45)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "blob":
        n = _noise(rng, h // ss, w // ss, octaves=3, base=2)
        yy, xx = np.mgrid[0 : h // ss, 0 : w // ss]
        env = 1 - (((xx - w / ss / 2) / (w / ss / 2)) ** 2 + ((yy - h / ss / 2) / (h / ss / 2)) ** 2)
        blob = (0.6 * n + env > 0.55).astype(np.uint8) * 255
        img = Image.fromarray(blob).resize((w, h), Image.BILINEAR)
    elif kind in ("polygon", "star"):
        k = int(rng.integers(3, 9)) * (2 if kind == "star" else 1)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k)) if kind == "polygon" else np.linspace(0, 2 * np.pi, k, endpoint=False)
        radii = rng.uniform(0.6, 1.0, k) if kind == "polygon" else np.where(np.arange(k) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
        pts = [(w / 2 + w / 2 * r * math.cos(a), h / 2 + h / 2 * r * math.sin(a)) for a, r in zip(angles, radii)]
        d.polygon(pts, fill=255)
    elif kind == "ellipse":
        d.ellipse([0, 0, w - 1, h - 1], fill=255)
    else:
        d.rounded_rectangle([0, 0, w - 1, h - 1], radius=float(rng.uniform(0, w / 3)), fill=255)
    img = img.resize((max(2, w // ss), size), Image.BOX)
    alpha = np.asarray(img, np.float32) / 255.0
    rows, cols = np.nonzero(alpha > 0.02)
    if len(rows) == 0:
        return np.ones((size, max(2, w // ss)), np.float32)
    return alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _shade(rng: np.random.Generator, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Texture and light an object's silhouette: returns an RGBA float patch."""
    h, w = alpha.shape
    texture = rng.choice(["flat", "noise", "stripes", "spots", "gradient", "two-tone"])
    base = np.broadcast_to(colour, (h, w, 3)).astype(np.float32).copy()
    n = _noise(rng, h, w, octaves=4, base=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    second = _palette_colour(rng, "any")
    if texture == "noise":
        base *= (0.6 + 0.8 * n)[..., None]
    elif texture == "stripes":
        a = rng.uniform(0, math.pi)
        f = rng.uniform(0.2, 0.8)
        s = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * f) > 0)[..., None]
        base = np.where(s, base, second)
    elif texture == "spots":
        base = np.where((n > 0.6)[..., None], second, base)
    elif texture == "gradient":
        t = (yy / max(h - 1, 1))[..., None]
        base = base * (1 - t) + second * t
    elif texture == "two-tone":
        base = np.where((yy > h * rng.uniform(0.3, 0.7))[..., None], second, base)
    base *= (0.9 + 0.2 * _noise(rng, h, w, octaves=3, base=4))[..., None]
    # shading: light from one side makes the object look round
    blurred = _blur(alpha, max(1.0, min(h, w) / 6))
    gy, gx = np.gradient(blurred)
    angle = rng.uniform(0, 2 * math.pi)
    light = 1 + 3.0 * (gx * math.cos(angle) + gy * math.sin(angle)) * max(h, w) / 20
    base *= np.clip(light, 0.5, 1.4)[..., None]
    return np.concatenate([np.clip(base, 0, 1), alpha[..., None]], axis=-1).astype(np.float32)


def _resize_rgba(rgba: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize an RGBA float patch (premultiplied, so edges do not pick up black)."""
    pre = rgba.copy()
    pre[..., :3] *= pre[..., 3:4]
    chans = [np.asarray(Image.fromarray(pre[..., c]).resize((w, h), Image.BILINEAR)) for c in range(4)]
    out = np.stack(chans, axis=-1)
    out[..., :3] /= np.maximum(out[..., 3:4], 1e-4)
    return np.clip(out, 0, 1).astype(np.float32)


@lru_cache(maxsize=256)
def make_foreground(seed: int, fg_id: int, size: int) -> np.ndarray:
    """One foreground object as an RGBA float patch at the size it has nearest the camera."""
    rng = _rng(seed, 2, fg_id)
    height = int(size * rng.uniform(0.3, 0.65))
    alpha = _object_alpha(rng, height)
    return _shade(rng, alpha, _palette_colour(rng, "any"))


# ---------------------------------------------------------------- samples


@lru_cache(maxsize=16)
def _cached_scene(seed: int, bg_id: int, size: int) -> Scene:
    return make_scene(seed, bg_id, size)


def render_sample(seed: int, fg_id: int, bg_id: int, flip: int, pos: int, size: int) -> dict[str, np.ndarray]:
    """fg_bg, mask (H×W uint8) and depth (H/2×W/2 uint8) for one sample of the grid."""
    base = _cached_scene(seed, bg_id, size)
    scene = Scene(base.image.copy(), base.depth.copy(), base.horizon)
    rng = _rng(seed, 3, fg_id, bg_id, flip, pos)
    obj = make_foreground(seed, fg_id, size)
    if flip:
        obj = obj[:, ::-1]
    H = W = size
    foot = float(rng.uniform(scene.horizon + 0.08 * (H - scene.horizon), H + 0.05 * H))
    scale = (0.35 + 0.75 * (foot - scene.horizon) / max(H - scene.horizon, 1)) * rng.uniform(0.8, 1.15)
    w, h = max(3, int(obj.shape[1] * scale)), max(3, int(obj.shape[0] * scale))
    obj = _resize_rgba(obj, w, h)
    x0 = int(rng.integers(-w // 4, W - 3 * w // 4))
    y0 = int(foot) - h
    if rng.random() < 0.3:  # camouflage: tint the object towards the colours around it
        ys, xs = slice(max(y0, 0), max(min(y0 + h, H), max(y0, 0) + 1)), slice(max(x0, 0), max(min(x0 + w, W), max(x0, 0) + 1))
        around = scene.image[ys, xs].reshape(-1, 3).mean(axis=0)
        k = float(rng.uniform(0.4, 0.8))
        obj[..., :3] = obj[..., :3] * (1 - k) + around * k * (0.8 + 0.4 * obj[..., :3].mean(-1, keepdims=True))
    obj[..., 3] = _blur(obj[..., 3], float(rng.uniform(0.3, 1.0)))
    # contact shadow on the ground: darker ground, not part of the mask
    sw, sh = int(w * rng.uniform(0.7, 1.3)), max(2, int(h * 0.12))
    shadow = Image.new("L", (sw * 2, sh * 2), 0)
    ImageDraw.Draw(shadow).ellipse([sw / 2, sh / 2, sw * 1.5, sh * 1.5], fill=int(255 * rng.uniform(0.25, 0.6)))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(sh / 2)), np.float32) / 255.0
    sx0, sy0 = x0 + w // 2 - sw + int(rng.integers(-w // 6 - 1, w // 6 + 1)), int(foot) - sh
    dark = np.zeros((*shadow.shape, 4), np.float32)
    dark[..., 3] = shadow
    _paste(scene, dark, sx0, sy0, None)
    # the object: as near as the ground under it, a little nearer in its middle (it is round)
    ground = scene.ground_depth(foot)
    bulge = _blur(obj[..., 3], max(1.0, w / 5))
    obj_depth = np.clip(ground + 0.08 * bulge * (0.5 + ground), 0, 1)
    alpha = _paste(scene, obj, x0, y0, obj_depth)
    image = scene.image + rng.standard_normal(scene.image.shape, dtype=np.float32) * float(rng.uniform(0.0, 0.015))  # sensor noise
    depth = Image.fromarray(_to_uint8(scene.depth)).resize((size // 2, size // 2), Image.BILINEAR)
    return {"fg_bg": _to_uint8(image), "mask": _to_uint8(alpha), "depth": np.asarray(depth)}


# ---------------------------------------------------------------- the dataset writer


def sample_grid(spec: SynthSpec, batch: int) -> list[tuple[int, int, int, int]]:
    """The (F, B, FLIP, POS) of a batch: per_batch of the batch's grid, drawn evenly by the seed."""
    per_bg = spec.foregrounds * 2 * spec.positions
    n_bg = max(spec.backgrounds_per_batch, math.ceil(spec.per_batch / per_bg))
    first_bg = (batch - 1) * n_bg + 1
    total = n_bg * per_bg
    picks = np.sort(_rng(spec.seed, 4, batch).choice(total, size=spec.per_batch, replace=False))
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
        files.append((f"{FOLDERS['bg']}/bg_img_{bg_id}.jpg", _encode_jpeg(_to_uint8(scene.image), 90)))
    for f, b, flip, pos in items:
        key = f"{f}_{b}_{flip}_{pos}"
        s = render_sample(spec.seed, f, b, flip, pos, spec.size)
        quality = int(_rng(spec.seed, 5, f, b, flip, pos).integers(75, 96))
        files.append((f"{FOLDERS['fg_bg']}/fg_bg_{key}.jpg", _encode_jpeg(s["fg_bg"], quality)))
        files.append((f"{FOLDERS['mask']}/bg_mask_{key}.jpg", _encode_jpeg(s["mask"], 90)))
        files.append((f"{FOLDERS['depth']}/depth_fg_bg_{key}.jpg", _encode_jpeg(s["depth"], 90)))
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
    root = Path(spec.out)
    root.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = os.cpu_count() or 1
    jobs = list(_chunks(spec))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.batches * spec.per_batch, unit="sample", desc="synth")
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
