"""The decoded-sample cache: every split decoded once into uint8 shards, read by every later epoch, run and trial.

Decoding JPEGs is most of ingest's work; a shard (numpy .npz, uncompressed) is read at several times
the rate (docs/benchmarks.md, "Ingest"). A split's shards live under CACHE/<key>/<writer>/, where the
key covers what decides their content (the samples' files, stamps, sizes, bad-sample policy), so a
changed dataset or size is decoded afresh and runs on the same data share one copy. A shard keeps what
differs per sample and no more: fg_bg, the mask as one bit a pixel (training thresholds it at 128
anyway), depth, and the number of the sample's background; the split's backgrounds, shared by
thousands of samples each, are stored once beside the shards (`backgrounds.npy`). About 86 KB a
sample at 160×160, against 186 KB for the four arrays. The manifest is shuffled before it is cut into
shards, so each shard is a random draw of the split; training reads the shards in the order of its draws
(fgbg.layout.Draws) and each shard's rows in a new order. Before writing, the free space is checked; `complete.json`
is written last: a killed or failed write (a full disk) is decoded again, and writers racing on one
key each write their own folder, the last marker naming the one read.

CACHE is a local folder on one machine; on a cluster, a folder every node sees or an s3:// URI.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from . import storage
from .errors import FgbgError
from .layout import Batch, Draws
from .reader import IngestConfig, decode_batch, decode_image, read_member

FORMAT = 2  # bump when the shards' layout changes: older caches are then left alone (1: every array whole, bg per sample)
_KEY_COLUMNS = ("sample", "source", "fg_bg", "bg", "mask", "depth")
_BACKGROUNDS: dict[str, np.ndarray] = {}  # a cache's backgrounds, loaded once per process


def manifest_blocks(table: pa.Table, config: IngestConfig) -> ray.data.Dataset:
    """The manifest rows as a Ray Dataset of `rows_per_block`-row blocks, set up for decoding tasks."""
    n = config.block_rows
    ds = ray.data.from_arrow([table.slice(i, n) for i in range(0, table.num_rows, n)] or [table])
    # Ray Data reserves a share of the CPUs per operator; where a decode task is a large part of the
    # cluster (2 cores: half) that left one task running at a time. Decoding is the only operator
    # that does work, so it gets every CPU it is given (docs/benchmarks.md, "Ingest": 1.7x).
    ds.context.op_resource_reservation_enabled = False
    return ds


def cache_key(table: pa.Table, config: IngestConfig) -> str:
    """What decides a split's decoded content, hashed: its rows' files in order, the batches' stamps
    (a batch written again has another), the sizes, the bad-sample policy."""
    h = hashlib.sha256(json.dumps([FORMAT, config.size, config.depth_size or config.size // 2, config.on_bad]).encode())
    for name in _KEY_COLUMNS:
        h.update(json.dumps(table.column(name).to_pylist()).encode())
    h.update(json.dumps([Batch(0, source).stamp() for source in sorted(set(table.column("source").to_pylist()))]).encode())
    return h.hexdigest()[:20]


def sample_bytes(size: int, depth_size: int | None = None) -> int:
    """What a shard holds per sample: fg_bg, the mask's bits, depth, the background's number and the bad flag."""
    depth_size = depth_size or size // 2
    return size * size * 3 + -(-size * size // 8) + depth_size * depth_size + 4 + 1


def _backgrounds(table: pa.Table) -> pa.Table:
    """The split's distinct backgrounds (source, bg member), each once, numbered in a fixed order (`bg_index`)."""
    keys = ["source", "bg", *(c for c in ("bg_offset", "bg_bytes") if c in table.column_names)]
    distinct = table.select(keys).group_by(keys).aggregate([]).sort_by([("source", "ascending"), ("bg", "ascending")])
    return distinct.append_column("bg_index", pa.array(np.arange(distinct.num_rows, dtype=np.int32)))


def _decode_backgrounds(batch: dict, config: IngestConfig) -> dict:
    """Backgrounds decoded as the reader decodes them; one that does not decode is zeros, its samples bad (on_bad skip)."""
    images = np.zeros((len(batch["bg"]), config.size, config.size, 3), np.uint8)
    for i, (source, member) in enumerate(zip(batch["source"], batch["bg"])):
        at = (int(batch["bg_offset"][i]), int(batch["bg_bytes"][i])) if "bg_offset" in batch else (-1, -1)
        try:
            images[i] = decode_image(read_member(str(source), str(member), at), "RGB", (config.size, config.size), str(source), str(member))
        except FgbgError:
            if config.on_bad == "error":
                raise
    return {"bg_index": batch["bg_index"], "image": images}


def _write_shard(batch: dict, folder: str, config: IngestConfig, shared: bool) -> dict:
    """Decode one block of manifest rows and store it as one shard; the shard's path and rows. shared: the
    backgrounds are stored once for the split (`bg_index` in the rows), else each sample's with it."""
    arrays = decode_batch(batch, size=config.size, depth_size=config.depth_size, on_bad=config.on_bad)
    n = len(arrays["bad"])
    shard = {"fg_bg": arrays["fg_bg"], "mask": np.packbits(arrays["mask"].reshape(n, -1) >= 128, axis=1), "depth": arrays["depth"],
             "bad": arrays["bad"]}
    if shared:
        shard["bg_index"] = np.where(arrays["bad"] == 0, batch["bg_index"], -1).astype(np.int32)
    else:
        shard["bg"] = arrays["bg"]
    buf = io.BytesIO()
    np.savez(buf, **shard)
    path = storage.join(folder, f"shard-{uuid.uuid4().hex}.npz")
    storage.write_bytes(path, buf.getvalue())
    return {"path": np.array([path]), "rows": np.array([n])}


def _load_backgrounds(path: str) -> np.ndarray:
    """A cache's backgrounds: memory-mapped from a local file (pages read as samples use them), else read once."""
    if path not in _BACKGROUNDS:
        _BACKGROUNDS.clear()
        _BACKGROUNDS[path] = np.load(path, mmap_mode="r") if not storage.is_uri(path) else np.load(io.BytesIO(storage.read_bytes(path)))
    return _BACKGROUNDS[path]


def _read_shard(batch: dict, shuffle: bool, backgrounds: str | None, size: int) -> dict:
    """One shard's samples as the reader decodes them (fgbg.reader.decode_batch; the mask 0 or 255); for training,
    its rows in a new order."""
    with np.load(io.BytesIO(storage.read_bytes(str(batch["path"][0])))) as z:
        shard = {k: z[k] for k in z.files}
    n = len(shard["bad"])
    if shuffle:
        order = np.random.default_rng().permutation(n)
        shard = {k: v[order] for k, v in shard.items()}
    mask = np.unpackbits(shard.pop("mask"), axis=1, count=size * size).reshape(n, size, size, 1) * np.uint8(255)
    if "bg_index" in shard:
        index = shard.pop("bg_index")
        bg = np.zeros((n, size, size, 3), np.uint8)
        ok = index >= 0
        bg[ok] = _load_backgrounds(backgrounds)[index[ok]]
        shard["bg"] = bg
    return {**shard, "mask": mask}


def _check_room(folder: str, need: int) -> None:
    """Refuse, naming both, when a local cache's disk has less free space than the split's shards need."""
    if storage.is_uri(folder):
        return
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if need > free:
        raise FgbgError(f"--cache {folder}: decoding this split needs about {_bytes(need)} there; {_bytes(free)} are free")


def _bytes(n: float) -> str:
    return next(f"{n / scale:.1f} {unit}" for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1, "bytes")) if n >= scale or unit == "bytes")


def build(table: pa.Table, config: IngestConfig, folder: str, say=print) -> dict:
    """Decode the split into shards under `folder` with Ray Data (in parallel); what complete.json records."""
    from .progress import Meter

    backgrounds = _backgrounds(table)
    shared = backgrounds.num_rows * 2 <= table.num_rows  # backgrounds under several samples each: stored once
    need = table.num_rows * sample_bytes(config.size, config.depth_size) + (backgrounds.num_rows * config.size**2 * 3 if shared else
                                                                             table.num_rows * config.size**2 * 3)
    _check_room(folder, need)
    say(f"decoding {table.num_rows} samples into the cache {folder} (once; later epochs and runs read it): about {_bytes(need)}")
    record = {"format": FORMAT, "rows": table.num_rows, "size": config.size, "backgrounds": None}
    if shared:
        decoded = manifest_blocks(backgrounds, config).map_batches(_decode_backgrounds, batch_size=config.block_rows, batch_format="numpy",
                                                                   fn_kwargs={"config": config})
        images = np.zeros((backgrounds.num_rows, config.size, config.size, 3), np.uint8)
        for part in decoded.iter_batches(batch_size=None, batch_format="numpy"):
            images[part["bg_index"]] = part["image"]
        buf = io.BytesIO()
        np.save(buf, images)
        record["backgrounds"] = storage.join(folder, "backgrounds.npy")
        storage.write_bytes(record["backgrounds"], buf.getvalue())
        key = lambda t: pc.binary_join_element_wise(t["source"], t["bg"], "\n")  # noqa: E731
        table = table.append_column("bg_index", pc.index_in(key(table), value_set=key(backgrounds)).cast(pa.int32()))
    ds = manifest_blocks(table.take(np.random.default_rng(0).permutation(table.num_rows)), config)
    written = ds.map_batches(_write_shard, batch_size=config.block_rows, batch_format="numpy",
                             fn_kwargs={"folder": folder, "config": config, "shared": shared})
    shards, meter = [], Meter(table.num_rows, "cache")
    try:
        for row in written.iter_rows():
            shards.append(str(row["path"]))
            meter.update(int(row["rows"]))
    finally:
        meter.close()
    return {**record, "shards": shards}


def cached_dataset(table: pa.Table, config: IngestConfig, root: str, say=print, draws: Draws | None = None) -> ray.data.Dataset:
    """The split as decoded shards under `root`, decoding it first if no complete copy is there; with draws (training),
    the shards that hold those draws, in their order, each shard's rows shuffled as it is read (a shard is a random
    block of the split: draws are counted in whole shards)."""
    if not storage.is_uri(root) and sum(1 for n in ray.nodes() if n["Alive"]) > 1:
        say(f"warning: the cache {root} is a local folder on a cluster of several nodes: it must be one they all see (else use s3://)")
    key_dir = storage.join(storage.absolute(root), cache_key(table, config))
    marker = storage.join(key_dir, "complete.json")
    if storage.info(marker).is_file:
        record = json.loads(storage.read_bytes(marker))
    else:
        record = build(table, config, storage.join(key_dir, uuid.uuid4().hex), say)
        storage.write_bytes(marker, json.dumps(record, indent=1).encode())
    shards = record["shards"]
    if draws is not None:
        first = draws.start // config.block_rows
        shards = [shards[i] for i in Draws(draws.seed, first, -(-(draws.start + draws.count) // config.block_rows) - first).indices(len(shards))]
    ds = ray.data.from_items([{"path": p} for p in shards])
    ds.context.op_resource_reservation_enabled = False  # as for decoding (manifest_blocks)
    return ds.map_batches(_read_shard, batch_size=1, batch_format="numpy",
                          fn_kwargs={"shuffle": draws is not None, "backgrounds": record["backgrounds"], "size": config.size})

