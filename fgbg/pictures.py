"""Pictures: result grids (bg, fg_bg, true/predicted mask, true/predicted depth in plasma, titled, each row's IoU beside
it) and single maps."""

from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from .metrics import per_image_iou

COLUMNS = ("bg", "fg_bg", "true mask", "predicted mask", "true depth", "predicted depth")
TITLE_PX, LABEL_PX = 24, 84  # the title strip's height and the IoU column's width, in pixels


def plasma(depth: np.ndarray) -> np.ndarray:
    """A depth map in [0, 1] (H×W) as an RGB uint8 image in the plasma colormap."""
    return (colormaps["plasma"](np.clip(depth, 0, 1))[..., :3] * 255).astype(np.uint8)


def gray(mask: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(mask, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def rgb(image: np.ndarray) -> np.ndarray:
    """3×H×W float in [0, 1] to H×W×3 uint8."""
    return (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))


def result_grid(batch: dict, mask_logits: torch.Tensor, depth: torch.Tensor, rows: int = 8) -> np.ndarray:
    """One row per sample, under a title per column: bg, fg_bg, true mask, predicted mask, true depth, predicted depth;
    left of each row, its IoU (predicted mask at probability 0.5 against the true one). uint8 H×W×3."""
    n = min(rows, len(batch["fg_bg"]))
    tile = max(batch["fg_bg"].shape[-1], 128)
    ious = per_image_iou(mask_logits[:n].float() > 0, batch["mask"][:n].float() > 0.5).tolist()
    out = []
    for i in range(n):
        tiles = [
            rgb(batch["bg"][i].float().cpu().numpy()),
            rgb(batch["fg_bg"][i].float().cpu().numpy()),
            gray(batch["mask"][i, 0].float().cpu().numpy()),
            gray((torch.sigmoid(mask_logits[i, 0].float()) > 0.5).float().cpu().numpy()),
            plasma(batch["depth"][i, 0].float().cpu().numpy()),
            plasma(depth[i, 0].float().cpu().numpy()),
        ]
        out.append(np.concatenate([_resize(t, tile) for t in tiles], axis=1))
    picture = Image.new("RGB", (LABEL_PX + tile * len(COLUMNS), TITLE_PX + tile * n), "white")
    picture.paste(Image.fromarray(np.concatenate(out, axis=0)), (LABEL_PX, TITLE_PX))
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=14)
    for c, title in enumerate(COLUMNS):
        draw.text((LABEL_PX + tile * c + tile // 2, TITLE_PX // 2), title, fill="black", font=font, anchor="mm")
    for r, iou in enumerate(ious):
        draw.text((LABEL_PX // 2, TITLE_PX + tile * r + tile // 2), f"IoU {iou:.3f}", fill="black", font=font, anchor="mm")
    return np.asarray(picture)


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def sample_files(mask: np.ndarray, depth: np.ndarray, size: tuple[int, int], probability: np.ndarray | None = None) -> dict[str, bytes]:
    """One sample's files: the mask (bool, at the model's size) as 0/255 at the input's size (w, h); the depth map
    (in [0, 1], at half the model's size) as 8-bit gray at half the input's size; with the probabilities, a raw .npz."""
    w, h = size
    mask_img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    depth_img = Image.fromarray(np.round(depth * 255).astype(np.uint8)).resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR)
    files = {"masks": png_bytes(np.asarray(mask_img)), "depth": png_bytes(np.asarray(depth_img))}
    if probability is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, mask_probability=probability.astype(np.float16), depth=depth.astype(np.float16))
        files["raw"] = buf.getvalue()
    return files
