"""The decoded-sample cache: every split decoded once into uint8 shards, read by every later epoch, run and trial.

Decoding JPEGs is most of ingest's work; a shard (numpy .npz, uncompressed) is read at about
twice the rate (docs/benchmarks.md, "Ingest"). A split's shards live under
CACHE/<key>/<writer>/, where the key covers what decides their content (the samples' files,
stamps, sizes, bad-sample policy), so a changed dataset or size is decoded afresh and runs on the same
data share one copy. The manifest is shuffled before it is cut into shards, so each shard is a
random draw of the split; a training epoch reads the shards in a new order and each shard's
rows in a new order. `complete.json` is written last: a killed write is decoded again, and
writers racing on one key each write their own folder, the last marker naming the one read.

CACHE is a local folder on one machine; on a cluster, a folder every node sees or an s3:// URI.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import numpy as np
import pyarrow as pa
import ray

from . import storage
from .layout import Batch
from .reader import IngestConfig, decode_batch

FORMAT = 1  # bump when the shards' layout changes: older caches are then left alone
_KEY_COLUMNS = ("sample", "source", "fg_bg", "bg", "mask", "depth")


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


def _write_shard(batch: dict, folder: str, config: IngestConfig) -> dict:
    """Decode one block of manifest rows and store it as one shard; the shard's path."""
    arrays = decode_batch(batch, size=config.size, depth_size=config.depth_size, on_bad=config.on_bad)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = storage.join(folder, f"shard-{uuid.uuid4().hex}.npz")
    storage.write_bytes(path, buf.getvalue())
    return {"path": np.array([path])}


def _read_shard(batch: dict, shuffle: bool) -> dict:
    """One shard's arrays; for training, its rows in a new order."""
    with np.load(io.BytesIO(storage.read_bytes(str(batch["path"][0])))) as z:
        arrays = {k: z[k] for k in z.files}
    if shuffle:
        order = np.random.default_rng().permutation(len(arrays["bad"]))
        arrays = {k: v[order] for k, v in arrays.items()}
    return arrays


def build(table: pa.Table, config: IngestConfig, folder: str) -> list[str]:
    """Decode the split into shards under `folder` with Ray Data (in parallel); the shard paths."""
    ds = manifest_blocks(table.take(np.random.default_rng(0).permutation(table.num_rows)), config)
    written = ds.map_batches(_write_shard, batch_size=config.block_rows, batch_format="numpy",
                             fn_kwargs={"folder": folder, "config": config}).take_all()
    return [str(row["path"]) for row in written]


def cached_dataset(table: pa.Table, config: IngestConfig, root: str, shuffle: bool = False, say=print) -> ray.data.Dataset:
    """The split as decoded shards under `root`, decoding it first if no complete copy is there."""
    if not storage.is_uri(root) and sum(1 for n in ray.nodes() if n["Alive"]) > 1:
        say(f"warning: the cache {root} is a local folder on a cluster of several nodes: it must be one they all see (else use s3://)")
    key_dir = storage.join(storage.absolute(root), cache_key(table, config))
    marker = storage.join(key_dir, "complete.json")
    if storage.info(marker).is_file:
        shards = json.loads(storage.read_bytes(marker))["shards"]
    else:
        say(f"decoding {table.num_rows} samples into the cache {key_dir} (once; later epochs and runs read it)")
        shards = build(table, config, storage.join(key_dir, uuid.uuid4().hex))
        storage.write_bytes(marker, json.dumps({"rows": table.num_rows, "size": config.size, "shards": shards}, indent=1).encode())
    ds = ray.data.from_items([{"path": p} for p in shards])
    ds.context.op_resource_reservation_enabled = False  # as for decoding (manifest_blocks)
    if shuffle:
        ds = ds.random_shuffle()  # the shard list: a few rows, shuffled anew each epoch
    return ds.map_batches(_read_shard, batch_size=1, batch_format="numpy", fn_kwargs={"shuffle": shuffle})
