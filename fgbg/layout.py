"""The dataset layout: batches of four JPEG folders, indexed into a cached pyarrow manifest.

A dataset root (a local folder or an object-store URI such as s3://bucket/prefix) holds
`batch{K}_images.zip` files or `batch{K}/` folders. Inside each, the four
folders stand at the root or under one top folder:

    fg_bg_jpg/fg_bg_{F}_{B}_{FLIP}_{POS}.jpg            input: background with a foreground
    bg_jpg/bg_img_{B}.jpg                               input: the background alone
    mask_black_jpg/bg_mask_{F}_{B}_{FLIP}_{POS}.jpg     target: white foreground on black
    depth_fg_bg_jpg/depth_fg_bg_{F}_{B}_{FLIP}_{POS}.jpg  target: depth, brighter = nearer
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .errors import FgbgError

FOLDERS = {"fg_bg": "fg_bg_jpg", "bg": "bg_jpg", "mask": "mask_black_jpg", "depth": "depth_fg_bg_jpg"}
_KEY = r"(\d+_\d+_\d+_\d+)"
PATTERNS = {
    "fg_bg": re.compile(rf"fg_bg_{_KEY}\.jpg"),
    "mask": re.compile(rf"bg_mask_{_KEY}\.jpg"),
    "depth": re.compile(rf"depth_fg_bg_{_KEY}\.jpg"),
    "bg": re.compile(r"bg_img_(\d+)\.jpg"),
}
_BATCH = re.compile(r"^batch(\d+)(_images\.zip)?$")
MANIFEST_NAME = ".fgbg_manifest.parquet"
MANIFEST_VERSION = 2  # 2: where each file lies in its zip
SCHEMA = pa.schema(
    [
        ("batch", pa.int32()),
        ("source", pa.string()),  # the batch's zip or folder, relative to the dataset root
        ("sample", pa.string()),  # "{F}_{B}_{FLIP}_{POS}"
        ("fg_bg", pa.string()),  # member paths inside the source
        ("bg", pa.string()),
        ("mask", pa.string()),
        ("depth", pa.string()),
        # where each file lies in its zip, from the zip's directory: its local header's offset and its compressed bytes
        # (-1 in a folder); readers go straight there, without holding the zip's directory (70 MB a 40,000-sample batch)
        *[(f"{kind}_{what}", pa.int64()) for kind in ("fg_bg", "bg", "mask", "depth") for what in ("offset", "bytes")],
    ]
)


@dataclass(frozen=True)
class Batch:
    """One batch of the dataset: a zip read in place, or a folder."""

    index: int
    path: str  # a local path or a URI

    @property
    def name(self) -> str:
        return storage.basename(self.path)

    @property
    def is_zip(self) -> bool:
        return self.path.endswith(".zip")

    def stamp(self) -> list:
        """What changes when the batch changes: size and mtime of the zip, of a local batch's folders,
        or (object stores have no folder times) the count, total size and latest mtime of its files."""
        if self.is_zip:
            i = storage.info(self.path)
            return [[self.name, i.size, i.mtime_ns]]
        if not storage.is_uri(self.path):
            paths = [Path(self.path), *sorted(p for p in Path(self.path).rglob("*") if p.is_dir())]
            return [[p.name, 0, p.stat().st_mtime_ns] for p in paths]
        files = [f for f in storage.listdir(self.path, recursive=True) if f.type == pafs.FileType.File]
        return [[self.name, len(files), sum(f.size for f in files), max((f.mtime_ns or 0 for f in files), default=0)]]


@dataclass(frozen=True)
class Problem:
    """Something wrong in the dataset, naming the zip or folder and the member."""

    source: str
    member: str
    what: str

    def __str__(self) -> str:
        return f"{self.source}: {self.member}: {self.what}" if self.member else f"{self.source}: {self.what}"


def find_batches(root: str | os.PathLike) -> list[Batch]:
    """The batches under root, by K; a folder wins over a zip of the same K (it was unzipped)."""
    root = storage.absolute(root)
    if not storage.is_dir(root):
        raise FgbgError(f"{root}: not a dataset folder (expected a folder holding batch{{K}}_images.zip or batch{{K}}/)")
    found: dict[int, Batch] = {}
    for entry in storage.listdir(root):
        match = _BATCH.match(entry.path)
        is_dir = entry.type == pafs.FileType.Directory
        if not match or (match.group(2) is None) != is_dir:
            continue
        k = int(match.group(1))
        if k not in found or is_dir:
            found[k] = Batch(k, storage.join(root, entry.path))
    if not found:
        raise FgbgError(f"{root}: no batches found (expected batch{{K}}_images.zip files or batch{{K}}/ folders, K = 1..N)")
    return [found[k] for k in sorted(found)]


def list_members(batch: Batch) -> dict[str, tuple[int, int]]:
    """Every file path inside the batch, '/'-separated, relative to the zip or folder: where it lies in the zip (its
    local header's offset, its compressed bytes), or (-1, -1) in a folder."""
    if batch.is_zip:
        try:
            with storage.open_input(batch.path) as f, zipfile.ZipFile(f) as zf:  # reads only the zip's directory
                return {i.filename: (i.header_offset, i.compress_size) for i in zf.infolist() if not i.filename.endswith("/")}
        except (zipfile.BadZipFile, OSError) as e:
            raise FgbgError(f"{batch.path}: unreadable zip ({e})") from None
    if not storage.is_uri(batch.path):
        names = [p.relative_to(batch.path).as_posix() for p in Path(batch.path).rglob("*.jpg")]
    else:
        names = [f.path for f in storage.listdir(batch.path, recursive=True) if f.path.endswith(".jpg")]
    return dict.fromkeys(names, (-1, -1))


def index_batch(batch: Batch, members: dict[str, tuple[int, int]]) -> tuple[list[dict], list[Problem]]:
    """Group a batch's files (list_members) into samples; every file that has no partner is a problem."""
    source = batch.name
    by_kind: dict[str, dict[str, str]] = {kind: {} for kind in FOLDERS}
    for member in members:
        parts = member.split("/")
        if len(parts) < 2 or len(parts) > 3:
            continue
        folder, name = parts[-2], parts[-1]
        for kind, folder_name in FOLDERS.items():
            if folder == folder_name and (m := PATTERNS[kind].fullmatch(name)):
                by_kind[kind][m.group(1)] = member
    if not any(by_kind.values()):
        return [], [Problem(source, "", "no fg_bg_jpg/, bg_jpg/, mask_black_jpg/ or depth_fg_bg_jpg/ images found")]
    rows, problems = [], []
    for key in sorted(by_kind["fg_bg"], key=_key_order):
        bg_id = key.split("_")[1]
        parts = {kind: by_kind[kind].get(bg_id if kind == "bg" else key) for kind in FOLDERS}
        missing = [kind for kind, member in parts.items() if member is None]
        if missing:
            want = ", ".join(f"{FOLDERS[k]}/{_name(k, bg_id if k == 'bg' else key)}" for k in missing)
            problems.append(Problem(source, parts["fg_bg"], f"missing partner file {want}"))
            continue
        where = {f"{kind}_{what}": at for kind, member in parts.items() for what, at in zip(("offset", "bytes"), members[member])}
        rows.append({"batch": batch.index, "source": source, "sample": key, **parts, **where})
    for kind in ("mask", "depth"):
        for key, member in sorted(by_kind[kind].items()):
            if key not in by_kind["fg_bg"]:
                problems.append(Problem(source, member, f"no fg_bg_jpg/{_name('fg_bg', key)} for it"))
    return rows, problems


def _name(kind: str, key: str) -> str:
    return {"fg_bg": "fg_bg_{}.jpg", "bg": "bg_img_{}.jpg", "mask": "bg_mask_{}.jpg", "depth": "depth_fg_bg_{}.jpg"}[
        kind
    ].format(key)


def _key_order(key: str) -> tuple[int, ...]:
    return tuple(int(x) for x in key.split("_"))


@dataclass
class Manifest:
    """One row per complete sample (where its four images live), and the structural problems."""

    root: str  # absolute local path or URI
    table: pa.Table
    problems: list[Problem]

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def batches(self) -> list[int]:
        return sorted(set(self.table.column("batch").to_pylist()))

    def split(self, test_batches: list[int] | None = None) -> dict[str, pa.Table]:
        """train/test tables; by default the last batch is the test set, the others train."""
        return split_table(self.table, test_batches)

    def report_problems(self, on_bad: str = "error", shown: int = 10) -> None:
        """The one policy for a dataset's problems: an error listing them, or with on_bad="skip" a notice; the first few named."""
        if not self.problems:
            return
        lines = "\n  ".join(str(p) for p in self.problems[:shown])
        more = f"\n  … and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        if on_bad == "error":
            raise FgbgError(f"{self.root}: {len(self.problems)} problem(s) in the dataset (run `fgbg inspect`, or use --on-bad skip):\n  {lines}{more}")
        print(f"skipping {len(self.problems)} sample(s) or file(s) with problems found while indexing:\n  {lines}{more}", flush=True)

    def with_paths(self, table: pa.Table | None = None) -> pa.Table:
        """The table with `source` made absolute, ready for readers in other processes."""
        table = self.table if table is None else table
        sources = [storage.join(self.root, s) for s in table.column("source").to_pylist()]
        return table.set_column(table.schema.get_field_index("source"), "source", pa.array(sources, pa.string()))


class Draws(NamedTuple):
    """Draws start … start+count−1 from a split, taken pass after pass: each pass takes every sample once, in an
    order of its own (seeded by seed and the pass's number). Epochs of samples_per_epoch draws each thus spread a pass
    over several epochs, and an epoch that starts where the last one stopped continues the pass (a resume too)."""

    seed: int
    start: int
    count: int

    def indices(self, n: int) -> np.ndarray:
        """The draws as row indices into a split of n samples."""
        position = np.arange(self.start, self.start + self.count, dtype=np.int64)
        out = np.empty(self.count, np.int64)
        for p in np.unique(position // n):
            here = position // n == p
            out[here] = _pass_order(self.seed, int(p), n)[position[here] % n]
        return out


@functools.lru_cache(maxsize=2)
def _pass_order(seed: int, number: int, n: int) -> np.ndarray:
    """One pass's order of n samples (kept: a pass is drawn in many blocks, in the same process)."""
    return np.random.default_rng([seed, number]).permutation(n)


def split_table(table: pa.Table, test_batches: list[int] | None = None) -> dict[str, pa.Table]:
    """train/test tables by batch number; by default the last batch is the test set."""
    import pyarrow.compute as pc

    batches = sorted(set(table.column("batch").to_pylist()))
    if test_batches is None:
        test_batches = batches[-1:] if len(batches) > 1 else []
    unknown = set(test_batches) - set(batches)
    if unknown:
        raise FgbgError(f"test batches {sorted(unknown)} are not in the dataset (it has batches {batches})")
    is_test = pc.is_in(table.column("batch"), pa.array(test_batches, pa.int32()))
    return {"train": table.filter(pc.invert(is_test)), "test": table.filter(is_test)}


def load_manifest(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None, refresh: bool = False) -> Manifest:
    """Index the dataset, or read the cached index when no batch changed since it was built.

    The cache sits next to the data when that is writable, else under ~/.cache/fgbg (or cache_dir),
    keyed by the root's path or URI; either way it is used only while the batches' stamps match.
    """
    root = storage.absolute(root)
    batches = find_batches(root)
    stamp = json.dumps({"version": MANIFEST_VERSION, "batches": [[b.index, b.stamp()] for b in batches]})
    for path in _cache_paths(root, cache_dir):
        if refresh:
            break
        try:
            cached = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
            meta = cached.schema.metadata or {}
            if meta.get(b"fgbg_stamp", b"").decode() == stamp:
                problems = [Problem(**p) for p in json.loads(meta[b"fgbg_problems"])]
                return Manifest(root, cached.replace_schema_metadata(None), problems)
        except (OSError, pa.ArrowException, KeyError, ValueError):
            pass  # no cache there, or a stale or damaged one: it is rebuilt
    rows, problems = [], []
    for batch in batches:
        try:
            batch_rows, batch_problems = index_batch(batch, list_members(batch))
        except FgbgError as e:
            batch_rows, batch_problems = [], [Problem(batch.name, "", str(e).split(": ", 1)[1])]
        rows += batch_rows
        problems += batch_problems
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = {"fgbg_stamp": stamp, "fgbg_problems": json.dumps([vars(p) for p in problems])}
    buffer = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), buffer)
    for path in _cache_paths(root, cache_dir):
        try:
            storage.write_bytes(path, buffer.getvalue().to_pybytes())
            break
        except (OSError, FgbgError):
            continue  # read-only data (or a bucket one may only read): the local cache
    return Manifest(root, table, problems)


def _cache_paths(root: str, cache_dir: str | os.PathLike | None) -> list[str]:
    home = Path(cache_dir) if cache_dir else Path(os.environ.get("FGBG_CACHE", Path.home() / ".cache" / "fgbg"))
    keyed = str(home / f"manifest-{hashlib.sha1(root.encode()).hexdigest()[:16]}.parquet")
    return [keyed] if cache_dir else [storage.join(root, MANIFEST_NAME), keyed]
