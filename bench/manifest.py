"""Indexing a dataset of the original's size: 10 zips × 40,000 samples (1.6M members).

The members are one tiny JPEG repeated (indexing reads names, not pixels), so the zips are
written in about a minute. Times the first index (reading every zip's directory) and the
cached one.
    python bench/manifest.py [--batches 10] [--per-batch 40000]
Writes bench/out/manifest.json.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile
from pathlib import Path

from PIL import Image

OUT = Path(__file__).parent / "out"


def write(root: Path, batches: int, per_batch: int) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    tiny = buf.getvalue()
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, batches + 1):
        with zipfile.ZipFile(root / f"batch{k}_images.zip", "w", zipfile.ZIP_STORED) as zf:
            for b in range(10):
                bg = (k - 1) * 10 + b + 1
                zf.writestr(f"bg_jpg/bg_img_{bg}.jpg", tiny)
                for i in range(per_batch // 10):
                    key = f"{i // 40 + 1}_{bg}_{i % 2}_{i // 2 % 20 + 1}"
                    for folder, name in (("fg_bg_jpg", "fg_bg"), ("mask_black_jpg", "bg_mask"), ("depth_fg_bg_jpg", "depth_fg_bg")):
                        zf.writestr(f"{folder}/{name}_{key}.jpg", tiny)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--per-batch", type=int, default=40000)
    args = ap.parse_args()
    from fgbg.layout import MANIFEST_NAME, load_manifest

    root = OUT / f"manifest-{args.batches}x{args.per_batch}"
    if not root.exists():
        write(root, args.batches, args.per_batch)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    t = time.perf_counter()
    m = load_manifest(root)
    first = time.perf_counter() - t
    t = time.perf_counter()
    again = load_manifest(root)
    cached = time.perf_counter() - t
    assert len(again) == len(m)
    result = {"samples": len(m), "problems": len(m.problems), "first_index_s": round(first, 2), "cached_s": round(cached, 2)}
    print(json.dumps(result))
    OUT.mkdir(exist_ok=True)
    (OUT / "manifest.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
