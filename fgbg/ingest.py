"""Ray Data ingest: a run's manifest tables (`load_tables`) → Ray Datasets decoded in parallel into fixed-shape arrays
(`make_datasets`), from the JPEGs or from the decoded cache (fgbg.cache).

The manifest (four member paths per sample) is small, so it is what gets ordered: a training run's dataset is its
draws (fgbg.layout.Draws), pass after pass, each pass in an order of its own, one epoch's after another, computed
block by block where the block is decoded (no shuffle of the whole split, which would grow with it). The images are
read and decoded to uint8 by `fgbg.reader.decode_batch` in Ray tasks, each worker process keeping
its zips open and its decoded backgrounds. The result feeds `TorchTrainer(datasets=...)`; in the
training loop, `fgbg.batch.drop_bad` removes samples skipped under `on_bad="skip"` and counts them, and
fgbg.batch makes float tensors of the rest (augmented for training) on the training device.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from .cache import cached_dataset, manifest_blocks
from .config import Config
from .errors import FgbgError
from .layout import Draws
from .reader import PAD, IngestConfig, decode_batch

_TABLES: dict[str, pa.Table] = {}  # manifest tables put in the object store, once per process (`decode_draws`)


def build_dataset(table: pa.Table, config: IngestConfig = IngestConfig(), draws: Draws | None = None) -> ray.data.Dataset:
    """A Ray Dataset of decoded uint8 samples from manifest rows whose `source` is absolute (Manifest.with_paths):
    in the table's order, or with `draws` those draws from its rows, in their order (training: the run's epochs)."""
    decode = {"size": config.size, "depth_size": config.depth_size, "on_bad": config.on_bad}
    if draws is None:
        return manifest_blocks(table, config).map_batches(decode_batch, batch_size=config.block_rows, batch_format="numpy", fn_kwargs=decode)
    # a block number per row, made manifest rows and decoded in one task per block (batch_size 1: Ray Data bundles a
    # task's input by rows, and a row here is a whole block); the run's draws are never all in memory
    blocks = max(1, -(-draws.count // config.block_rows))
    ds = ray.data.range(blocks, override_num_blocks=min(blocks, 1000))
    ds.context.op_resource_reservation_enabled = False  # as in manifest_blocks
    return ds.map_batches(decode_draws, batch_size=1, batch_format="numpy",
                          fn_kwargs={"rows": ray.put(table), "draws": draws, "block": config.block_rows, **decode})


def decode_draws(batch: dict, rows: ray.ObjectRef, draws: Draws, block: int, **decode) -> dict:
    """One block of draws (batch: the block's number) decoded: its manifest rows (the table is fetched once per
    process), then fgbg.reader.decode_batch."""
    key = rows.hex()
    if key not in _TABLES:
        _TABLES.clear()
        _TABLES[key] = ray.get(rows)
    table = _TABLES[key]
    first = draws.start + int(batch["id"][0]) * block
    picked = table.take(Draws(draws.seed, first, min(block, draws.start + draws.count - first)).indices(table.num_rows))
    return decode_batch({k: np.asarray(picked.column(k).to_pylist(), dtype=object) for k in picked.column_names}, **decode)


def samples_dataset(table: pa.Table, config: IngestConfig, cache: str = "", draws: Draws | None = None) -> ray.data.Dataset:
    """The one way fgbg builds a dataset of decoded samples: from the decoded cache when one is given
    (fgbg.cache, which decodes the split first if need be), else decoding the JPEGs as it is read."""
    if cache:
        return cached_dataset(table, config, cache, draws=draws)
    return build_dataset(table, config, draws)


def pad_rows(table: pa.Table, multiple: int) -> pa.Table:
    """The table with copies of its first row, marked as padding, up to a multiple of `multiple` rows.

    Ray Train splits a dataset into equal shards by dropping the remainder; padding instead keeps
    every sample in the evaluation, and the padding is dropped after decoding.
    """
    extra = (-table.num_rows) % max(multiple, 1)
    if extra == 0 or table.num_rows == 0:
        return table
    pad = table.slice(0, 1).to_pylist()[0] | {"sample": PAD}
    return pa.concat_tables([table, pa.Table.from_pylist([pad] * extra, schema=table.schema)])


def load_tables(cfg: Config) -> dict:
    """The run's train and test manifest tables (sources absolute), after the dataset's problems are reported."""
    from .layout import load_manifest

    if not cfg.data:
        raise FgbgError("no dataset given (--data DIR, or data: in the config)")
    manifest = load_manifest(cfg.data)
    manifest.report_problems(cfg.on_bad)
    split = manifest.split(cfg.test_batches)
    train = split["train"].slice(0, cfg.train_samples) if cfg.train_samples else split["train"]
    test = split["test"].slice(0, cfg.test_samples) if cfg.test_samples else split["test"]
    if train.num_rows == 0 or test.num_rows == 0:
        raise FgbgError(f"{cfg.data}: need training and test samples (found {train.num_rows} and {test.num_rows}; "
                        "a dataset needs at least 2 batches, or set test_batches)")
    if train.num_rows < cfg.batch_size:
        raise FgbgError(f"{train.num_rows} training samples are fewer than one batch of {cfg.batch_size}")
    return {"train": manifest.with_paths(train), "test": manifest.with_paths(test)}


def make_datasets(cfg: Config, tables: dict, drawn_from: int = 0, epochs: int | None = None) -> dict:
    """The run's Ray Datasets: training, the draws of its remaining `epochs` from `drawn_from` on, one epoch after
    another (an epoch: samples_per_epoch draws, else a pass; Config.epoch_samples); test padded so every worker gets
    an equal shard."""
    ingest = IngestConfig(size=cfg.size, on_bad=cfg.on_bad)
    epochs = cfg.epochs if epochs is None else epochs
    draws = Draws(cfg.seed, drawn_from, max(1, epochs) * cfg.epoch_samples(tables["train"].num_rows))
    return {"train": samples_dataset(tables["train"], ingest, cfg.cache, draws=draws),
            "test": samples_dataset(pad_rows(tables["test"], max(cfg.workers, 1)), ingest, cfg.cache)}
