"""The pictures behind `fgbg synth`: background scenes and foreground objects, drawn from a seed.

A scene is a sky or wall above a horizon, a textured ground plane receding to it in perspective,
far structures and clutter; an object has its own shape (figure, animal, plant, blob, polygon,
box …), texture and shading. fgbg.synth places objects in scenes and writes the dataset.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ---------------------------------------------------------------- small image helpers


def rng_for(seed: int, *key: int) -> np.random.Generator:
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


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def blur(a: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a [0, 1] float map (through 8 bits: PIL blurs only integer images)."""
    return np.asarray(Image.fromarray(to_uint8(a)).filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


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


def make_scene(seed: int, bg_id: int, size: int, stream: int = 1) -> Scene:
    """One background scene, from (seed, bg_id) alone (another stream draws scenes that are no dataset's background)."""
    rng = rng_for(seed, stream, bg_id)
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


def paste(scene: Scene, rgba: np.ndarray, x0: int, y0: int, depth_value: np.ndarray | float | None) -> np.ndarray:
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
    paste(scene, rgba, x0, scene.horizon - h + 1, float(rng.uniform(0.06, 0.16)))


def _clutter(rng: np.random.Generator, scene: Scene) -> None:
    H, W = scene.depth.shape
    foot = float(rng.uniform(scene.horizon + 2, H + 4))
    shape = _object_alpha(rng, int(10 + 30 * rng.random()))
    scale = 0.3 + 0.9 * (foot - scene.horizon) / max(H - scene.horizon, 1)
    rgba = _shade(rng, shape, _palette_colour(rng, "any"))
    rgba = resize_rgba(rgba, max(2, int(rgba.shape[1] * scale)), max(2, int(rgba.shape[0] * scale)))
    x0 = int(rng.integers(-rgba.shape[1] // 2, W - rgba.shape[1] // 2))
    paste(scene, rgba, x0, int(foot) - rgba.shape[0], scene.ground_depth(foot))


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


def _shade(rng: np.random.Generator, alpha: np.ndarray, colour: np.ndarray, picture: np.ndarray | None = None) -> np.ndarray:
    """Texture and light an object's silhouette: returns an RGBA float patch. A picture (float, the silhouette's
    size) is its texture instead of a drawn pattern."""
    h, w = alpha.shape
    texture = "picture" if picture is not None else rng.choice(["flat", "noise", "stripes", "spots", "gradient", "two-tone"])
    base = np.broadcast_to(colour, (h, w, 3)).astype(np.float32).copy()
    n = _noise(rng, h, w, octaves=4, base=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    second = _palette_colour(rng, "any")
    if texture == "picture":
        base = picture.copy()
    elif texture == "noise":
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
    blurred = blur(alpha, max(1.0, min(h, w) / 6))
    gy, gx = np.gradient(blurred)
    angle = rng.uniform(0, 2 * math.pi)
    light = 1 + 3.0 * (gx * math.cos(angle) + gy * math.sin(angle)) * max(h, w) / 20
    base *= np.clip(light, 0.5, 1.4)[..., None]
    return np.concatenate([np.clip(base, 0, 1), alpha[..., None]], axis=-1).astype(np.float32)


def resize_rgba(rgba: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize an RGBA float patch (premultiplied, so edges do not pick up black)."""
    pre = rgba.copy()
    pre[..., :3] *= pre[..., 3:4]
    chans = [np.asarray(Image.fromarray(pre[..., c]).resize((w, h), Image.BILINEAR)) for c in range(4)]
    out = np.stack(chans, axis=-1)
    out[..., :3] /= np.maximum(out[..., 3:4], 1e-4)
    return np.clip(out, 0, 1).astype(np.float32)


def crop_resized(rng: np.random.Generator, picture: np.ndarray, w: int, h: int, min_frac: float = 0.2) -> np.ndarray:
    """A random crop of a picture (float H×W×3) with the aspect of w×h, resized to w×h."""
    H, W = picture.shape[:2]
    frac = float(rng.uniform(min_frac, 1.0))
    ch = max(2, int(min(H, W * h / max(w, 1)) * frac))
    cw = max(2, min(W, int(ch * w / max(h, 1))))
    y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    crop = np.ascontiguousarray(picture[y : y + ch, x : x + cw])
    return np.stack([np.asarray(Image.fromarray(crop[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)], axis=-1)


@lru_cache(maxsize=256)
def make_foreground(seed: int, fg_id: int, size: int, picture_textures: float = 0.0) -> np.ndarray:
    """One foreground object as an RGBA float patch at the size it has nearest the camera.

    A share `picture_textures` of objects wear a crop of a picture (a scene drawn for that object alone,
    never a dataset background) instead of a drawn pattern (flat, noise, stripes, spots …), as clothes,
    fur and printed things in photographs carry the same kinds of texture as the world behind them.
    Those draws come from a stream of their own: with 0, every object is what it was before the option.
    """
    rng = rng_for(seed, 2, fg_id)
    height = int(size * rng.uniform(0.3, 0.65))
    alpha = _object_alpha(rng, height)
    pick = rng_for(seed, 8, fg_id)
    picture = None
    if pick.random() < picture_textures:
        picture = crop_resized(pick, make_scene(seed, fg_id, size, stream=7).image, alpha.shape[1], alpha.shape[0])
    return _shade(rng, alpha, _palette_colour(rng, "any"), picture)
