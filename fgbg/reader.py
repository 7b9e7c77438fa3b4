"""Plain single-process reading of samples: bytes from zips or folders, JPEG decode, resize.

Ray Data runs `decode_batch` in parallel (fgbg.ingest); tests and benchmarks call it directly.
Arrays come out fixed-shape uint8, channels last as JPEG decodes them: fg_bg and bg N×H×W×3,
mask N×H×W×1, depth N×h×w×1 (h = H // 2, the model's depth output). Conversion to float,
the mask threshold and augmentation happen on the training device (fgbg.batch): a quarter of the
bytes cross processes, and a GPU does that arithmetic instead of the decoding CPUs.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import storage
from .errors import BadSample

_ZIPS: dict[tuple[int, str], zipfile.ZipFile] = {}  # zips read through their directory (no location given)
_FILES: dict[tuple[int, str], io.IOBase] = {}  # zips read at the manifest's locations
_EXTRA_ROOM = 64  # bytes read past a member's name for its extra field (zipfile writes none; other tools' are some 30)
_BG_CACHE: OrderedDict = OrderedDict()
PAD = ""  # the `sample` of rows added only to give every worker an equal shard
_BG_CACHE_SIZE = 512  # decoded backgrounds kept per process (≈ 77 KB each at 160×160)



@dataclass(frozen=True)
class IngestConfig:
    """How samples are decoded: sizes, what to do with bad files, block size."""

    size: int = 160
    depth_size: int | None = None  # default: size // 2, the model's depth output
    on_bad: str = "error"  # or "skip": drop the sample and count it
    rows_per_block: int = 256  # manifest rows per Ray Data block: the unit of parallel decoding (256 measured best, docs/benchmarks.md)

    @property
    def block_rows(self) -> int:
        """rows_per_block, at least 1: the batch size of the decoding tasks."""
        return max(1, self.rows_per_block)

def read_member(source: str, member: str, at: tuple[int, int] = (-1, -1)) -> bytes:
    """The bytes of one file of a batch (zip read in place, or folder; local, or ranged reads from a URI). at: where the
    file lies in its zip (the manifest's offset and bytes): read straight from there, else found in the zip's directory."""
    try:
        if source.endswith(".zip"):
            if at[0] >= 0:
                return _read_at(source, member, *at)
            key = (os.getpid(), source)  # a forked child must not share its parent's file offset
            zf = _ZIPS.get(key)
            if zf is None:
                zf = _ZIPS[key] = zipfile.ZipFile(storage.open_input(source))
            return zf.read(member)
        return storage.read_bytes(storage.join(source, member))
    except (KeyError, FileNotFoundError):
        raise BadSample(source, member, "missing") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise BadSample(source, member, f"unreadable ({e})") from None


def _read_at(source: str, member: str, offset: int, size: int) -> bytes:
    """A zip member read from its local header at offset: the header (30 bytes, then the name and an extra field), then
    its size compressed bytes, stored or deflated; one read for all of it (one request on an object store), a second
    only when the extra field is longer than the room left for it."""
    key = (os.getpid(), source)
    f = _FILES.get(key)
    if f is None:
        f = _FILES[key] = storage.open_input(source)
    name = member.encode()
    f.seek(offset)
    chunk = f.read(30 + len(name) + _EXTRA_ROOM + size)
    signature, method, name_length, extra_length = struct.unpack("<I4xH16xHH", chunk[:30]) if len(chunk) >= 30 else (0, 0, 0, 0)
    if signature != 0x04034B50:
        raise zipfile.BadZipFile(f"no local header at {offset} (the zip changed since it was indexed?)")
    if chunk[30 : 30 + name_length] != name:
        raise zipfile.BadZipFile(f"another file at {offset} (the zip changed since it was indexed?)")
    start = 30 + name_length + extra_length
    data = chunk[start : start + size]
    if len(data) < size:
        f.seek(offset + start)
        data = f.read(size)
    if method == zipfile.ZIP_DEFLATED:
        return zlib.decompressobj(-15).decompress(data)
    if method != zipfile.ZIP_STORED:
        raise zipfile.BadZipFile(f"compression method {method} (expected stored or deflated)")
    return data


def _where(row, kind: str) -> tuple[int, int]:
    """A manifest row's location of one kind of file in its zip, (-1, -1) if it has none."""
    offset = row.get(f"{kind}_offset", -1)
    return (int(offset), int(row.get(f"{kind}_bytes", -1))) if offset is not None else (-1, -1)


@contextmanager
def open_jpeg(data: bytes, source: str = "?", member: str = "?", formats: tuple[str, ...] = ("JPEG",)):
    """The one JPEG check: an image opened from bytes, and any failure in the block, decoding included,
    raised as a BadSample naming the zip (or folder) and member. (A user's own pairs may be PNGs too.)"""
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in formats:
            raise BadSample(source, member, f"not a {' or '.join(formats)} (found {img.format})")
        yield img
    except BadSample:
        raise
    except UnidentifiedImageError:  # (PIL's message names a BytesIO object, not the file)
        broken = data[:2] == b"\xff\xd8" or data[:4] == b"\x89PNG"  # an image's first bytes, and then no image
        raise BadSample(source, member, f"undecodable or truncated {' or '.join(formats)}" if broken else
                        f"not a {' or '.join(formats)} image") from None
    except Exception as e:  # PIL raises many kinds for broken or truncated files
        raise BadSample(source, member, f"undecodable or truncated {' or '.join(formats)} ({e})") from None


def decode_image(data: bytes, mode: str, size: tuple[int, int], source: str = "?", member: str = "?",
                 formats: tuple[str, ...] = ("JPEG",)) -> np.ndarray:
    """A JPEG decoded to uint8 H×W(×3) in mode 'RGB' or 'L', resized to size (w, h)."""
    with open_jpeg(data, source, member, formats) as img:
        img.draft(mode, size)  # let libjpeg decode at a reduced scale when much smaller is wanted
        img = img.convert(mode)
        if img.size != size:
            img = img.resize(size, Image.BILINEAR)
        return np.asarray(img)


def _background(source: str, member: str, size: int, at: tuple[int, int] = (-1, -1)) -> np.ndarray:
    """A background decoded once per process and kept: many samples share each one."""
    key = (source, member, size)
    arr = _BG_CACHE.get(key)
    if arr is None:
        arr = decode_image(read_member(source, member, at), "RGB", (size, size), source, member)
        _BG_CACHE[key] = arr
        if len(_BG_CACHE) > _BG_CACHE_SIZE:
            _BG_CACHE.popitem(last=False)
    else:
        _BG_CACHE.move_to_end(key)
    return arr


def load_sample(row: dict, size: int, depth_size: int) -> dict[str, np.ndarray]:
    """One manifest row (with absolute `source`) decoded to uint8 arrays at the model's sizes."""
    src = row["source"]
    return {
        "fg_bg": decode_image(read_member(src, row["fg_bg"], _where(row, "fg_bg")), "RGB", (size, size), src, row["fg_bg"]),
        "bg": _background(src, row["bg"], size, _where(row, "bg")),
        "mask": decode_image(read_member(src, row["mask"], _where(row, "mask")), "L", (size, size), src, row["mask"]),
        "depth": decode_image(read_member(src, row["depth"], _where(row, "depth")), "L", (depth_size, depth_size), src, row["depth"]),
    }


def decode_batch(
    batch: dict[str, np.ndarray],
    size: int = 160,
    depth_size: int | None = None,
    on_bad: str = "error",
) -> dict[str, np.ndarray]:
    """A batch of manifest rows to stacked uint8 arrays, plus `bad`: 1 where a sample was skipped, 2 for padding.

    on_bad="error" raises BadSample naming the zip and member; "skip" zero-fills the sample and
    marks it bad, so that the consumer drops it and counts it (fgbg.batch.drop_bad).
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    depth_size = depth_size or size // 2
    n = len(batch["fg_bg"])
    out = {
        "fg_bg": np.zeros((n, size, size, 3), np.uint8),
        "bg": np.zeros((n, size, size, 3), np.uint8),
        "mask": np.zeros((n, size, size, 1), np.uint8),
        "depth": np.zeros((n, depth_size, depth_size, 1), np.uint8),
        "bad": np.zeros(n, np.uint8),
    }
    for i in range(n):
        row = {k: str(batch[k][i]) for k in ("source", "fg_bg", "bg", "mask", "depth")}
        row |= {k: batch[k][i] for k in batch if k.endswith(("_offset", "_bytes"))}
        if "sample" in batch and batch["sample"][i] == PAD:
            out["bad"][i] = 2  # padding that evens out shards: dropped, not counted as bad
            continue
        try:
            sample = load_sample(row, size, depth_size)
        except BadSample:
            if on_bad == "error":
                raise
            out["bad"][i] = 1
            continue
        for key, value in sample.items():
            out[key][i] = value.reshape(out[key].shape[1:])
    return out


def decode_table(table, size: int = 160) -> dict[str, np.ndarray]:
    """Every row of a manifest table (sources absolute: Manifest.with_paths) decoded in this process."""
    rows = {k: np.array(v, dtype=object) for k, v in table.to_pydict().items()}
    return decode_batch(rows, size=size)
