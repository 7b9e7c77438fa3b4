"""Ray Data ingest: manifest rows → a Ray Dataset decoded in parallel into fixed-shape arrays.

The manifest (four member paths per sample) is small, so it is what gets shuffled; the images are
read and decoded to uint8 by `fgbg.reader.decode_batch` in Ray tasks, each worker process keeping
its zips open and its decoded backgrounds. The result feeds `TorchTrainer(datasets=...)`; in the
training loop, `fgbg.batch.drop_bad` removes samples skipped under `on_bad="skip"` and counts them, and
fgbg.batch makes float tensors of the rest (augmented for training) on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import ray

from .reader import PAD, decode_batch


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


def manifest_blocks(table: pa.Table, config: IngestConfig) -> ray.data.Dataset:
    """The manifest rows as a Ray Dataset of `rows_per_block`-row blocks, set up for decoding tasks."""
    n = config.block_rows
    ds = ray.data.from_arrow([table.slice(i, n) for i in range(0, table.num_rows, n)] or [table])
    # Ray Data reserves a share of the CPUs per operator; where a decode task is a large part of the
    # cluster (2 cores: half) that left one task running at a time. Decoding is the only operator
    # that does work, so it gets every CPU it is given (docs/benchmarks.md, "Ingest": 1.7x).
    ds.context.op_resource_reservation_enabled = False
    return ds


def build_dataset(table: pa.Table, config: IngestConfig = IngestConfig(), shuffle: bool = False) -> ray.data.Dataset:
    """A Ray Dataset of decoded uint8 samples from manifest rows whose `source` is absolute (Manifest.with_paths).

    With `shuffle`, the manifest is shuffled anew each time the dataset is iterated (training).
    """
    ds = manifest_blocks(table, config)
    if shuffle:
        ds = ds.random_shuffle()
    return ds.map_batches(
        decode_batch,
        batch_size=config.block_rows,
        batch_format="numpy",
        fn_kwargs={"size": config.size, "depth_size": config.depth_size, "on_bad": config.on_bad},
    )


def samples_dataset(table: pa.Table, config: IngestConfig, cache: str = "", shuffle: bool = False) -> ray.data.Dataset:
    """The one way fgbg builds a dataset of decoded samples: from the decoded cache when one is given
    (fgbg.cache, which decodes the split first if need be), else decoding the JPEGs as it is read."""
    if cache:
        from .cache import cached_dataset

        return cached_dataset(table, config, cache, shuffle)
    return build_dataset(table, config, shuffle)


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
