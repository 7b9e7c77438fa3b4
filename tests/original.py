"""Writes small datasets in the original's naming with plain PIL: a stand-in for "another program".

Each sample is a flat background with a rectangle pasted on it, so tests can compute what a
reader must return. `top` puts the four folders under one top folder inside the zip.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sample_files(batch: int, n_bg: int = 2, n_fg: int = 3, size: int = 32, depth_size: int = 16) -> dict[str, bytes]:
    """{member path: bytes} for one batch: n_bg backgrounds × n_fg foregrounds × flips 0/1 × position 1."""
    files = {}
    for b in range(1, n_bg + 1):
        bg_id = (batch - 1) * n_bg + b
        bg = np.full((size, size, 3), (40 * b) % 256, np.uint8)
        files[f"bg_jpg/bg_img_{bg_id}.jpg"] = jpeg(bg)
        for f in range(1, n_fg + 1):
            for flip in (0, 1):
                key = f"{f}_{bg_id}_{flip}_1"
                fg_bg, mask = bg.copy(), np.zeros((size, size), np.uint8)
                x = 2 + 4 * f + 6 * flip
                fg_bg[8:20, x : x + 8] = (250, 30 * f, 20)
                mask[8:20, x : x + 8] = 255
                depth = np.tile(np.linspace(0, 255, depth_size, dtype=np.uint8)[:, None], (1, depth_size))
                files[f"fg_bg_jpg/fg_bg_{key}.jpg"] = jpeg(fg_bg)
                files[f"mask_black_jpg/bg_mask_{key}.jpg"] = jpeg(mask)
                files[f"depth_fg_bg_jpg/depth_fg_bg_{key}.jpg"] = jpeg(depth)
    return files


def write_original(root: Path, batches: int = 2, form: str = "zip", **kw) -> Path:
    """A dataset root with `batches` batches, as zips ("zip", "zip-top") or folders ("dir")."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, batches + 1):
        files = sample_files(k, **kw)
        if form == "dir":
            for name, data in files.items():
                path = root / f"batch{k}" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        else:
            top = f"batch{k}_images/" if form == "zip-top" else ""
            with zipfile.ZipFile(root / f"batch{k}_images.zip", "w") as zf:
                for name, data in files.items():
                    zf.writestr(top + name, data)
    return root


def rewrite_zip(path: Path, replace: dict[str, bytes | None]) -> None:
    """Rewrite a zip with some members replaced (bytes) or removed (None)."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    for name, data in replace.items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
