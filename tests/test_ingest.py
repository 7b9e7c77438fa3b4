"""The Ray Data pipeline on a real local Ray cluster, against the plain single-process reader."""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fgbg.batch import drop_bad
from fgbg.cache import cache_key, cached_dataset
from fgbg.ingest import IngestConfig, build_dataset, samples_dataset
from fgbg.layout import Draws, load_manifest
from fgbg.reader import decode_batch

from original import rewrite_zip, write_original


def _plain(table, size):
    rows = {k: np.array(table.column(k).to_pylist(), dtype=object) for k in table.column_names}
    return decode_batch(rows, size=size)


def _content_keys(batch) -> list[float]:
    """Each sample's key by its content, since Ray Data may reorder samples."""
    return np.round(batch["fg_bg"].sum(axis=(1, 2, 3)) * 1000 + batch["depth"].sum(axis=(1, 2, 3)), 1).tolist()


def _by_content(batch):
    """Samples keyed by their content: key → index."""
    return {k: i for i, k in enumerate(_content_keys(batch))}


def test_ray_data_yields_the_same_samples_as_the_plain_reader(ray_cluster, synth_data):
    m = load_manifest(synth_data)
    table = m.with_paths(m.split()["test"])
    ds = build_dataset(table, IngestConfig(size=32, rows_per_block=5))
    got = {k: np.concatenate(v) for k, v in _collect(ds.iter_batches(batch_size=7, batch_format="numpy")).items()}
    want = _plain(table, 32)
    assert len(got["fg_bg"]) == len(want["fg_bg"]) == 24
    g, w = _by_content(got), _by_content(want)
    assert set(g) == set(w)
    for key, i in w.items():
        for name in ("fg_bg", "bg", "mask", "depth"):
            np.testing.assert_array_equal(got[name][g[key]], want[name][i])


def _collect(batches):
    out = {}
    for b in batches:
        for k, v in b.items():
            out.setdefault(k, []).append(v)
    return out


def test_a_runs_training_draws_take_every_sample_once_a_pass_ready_for_torch(ray_cluster, synth_data):
    import torch

    manifest = load_manifest(synth_data)
    config = IngestConfig(size=32, rows_per_block=4)
    train = samples_dataset(manifest.with_paths(manifest.split()["train"]), config, draws=Draws(0, 0, 48))  # two passes over 24
    batches = list(train.iter_torch_batches(batch_size=8))
    b = batches[0]
    assert b["fg_bg"].dtype == torch.uint8 and tuple(b["fg_bg"].shape[1:]) == (32, 32, 3)
    assert tuple(b["depth"].shape[1:]) == (16, 16, 1)
    # every sample twice: a pass each (each pass's order: test_layout.py; Ray Data may hand blocks on out of order)
    every = torch.cat([x["fg_bg"] for x in batches]).flatten(1).sum(1).tolist()
    assert len(every) == 48 and set(Counter(every).values()) == {2} and len(set(every)) == 24


def test_bad_file_fails_the_pipeline_naming_it_or_is_skipped_and_counted(ray_cluster, tmp_path):
    root = write_original(tmp_path / "d", batches=1)
    member = "depth_fg_bg_jpg/depth_fg_bg_3_2_1_1.jpg"
    rewrite_zip(root / "batch1_images.zip", {member: b"\xff\xd8 broken"})
    m = load_manifest(root)
    table = m.with_paths()
    with pytest.raises(Exception, match=f"batch1_images.zip: {member}: undecodable"):
        build_dataset(table, IngestConfig(size=32)).materialize()
    ds = build_dataset(table, IngestConfig(size=32, on_bad="skip"))
    kept, skipped = 0, 0
    for batch in ds.iter_torch_batches(batch_size=5):
        clean, n_bad = drop_bad(batch)
        kept += len(clean["fg_bg"])
        skipped += n_bad
        assert "bad" not in clean
    assert (kept, skipped) == (11, 1)


def test_draws_are_decoded_in_their_order_from_the_jpegs_and_counted_in_shards_from_the_cache(ray_cluster, synth_data, tmp_path):
    m = load_manifest(synth_data)
    table = m.with_paths(m.split()["train"])
    config = IngestConfig(size=32, rows_per_block=4)
    draws = Draws(seed=5, start=20, count=30)  # the end of the first pass over 24 samples, then most of the second
    got = {k: np.concatenate(v) for k, v in _collect(build_dataset(table, config, draws=draws).iter_batches(batch_size=7, batch_format="numpy")).items()}
    want = _plain(table.take(draws.indices(table.num_rows)), 32)
    assert len(got["fg_bg"]) == 30 and Counter(_content_keys(got)) == Counter(_content_keys(want))  # the same samples, as often
    # from the cache: the shards (blocks of 4) that hold draws 20 to 49, a shard's rows shuffled as it is read
    cached = cached_dataset(table, config, str(tmp_path / "cache"), draws=draws, say=lambda _: None)
    assert sum(len(b["fg_bg"]) for b in cached.iter_batches(batch_size=None, batch_format="numpy")) == 4 * (-(-50 // 4) - 20 // 4)


def test_the_cache_decodes_once_yields_the_same_samples_and_a_new_order_each_pass(ray_cluster, synth_data, tmp_path):

    m = load_manifest(synth_data)
    table = m.with_paths(m.split()["train"])
    config = IngestConfig(size=32, rows_per_block=5)
    root = tmp_path / "cache"
    messages = []
    ds = cached_dataset(table, config, str(root), say=messages.append, draws=Draws(0, 0, 24))
    first = {k: np.concatenate(v) for k, v in _collect(ds.iter_batches(batch_size=7, batch_format="numpy")).items()}
    want = _plain(table, 32)
    g, w = _by_content(first), _by_content(want)
    assert len(first["fg_bg"]) == len(want["fg_bg"]) == 24 and set(g) == set(w)
    for key, i in w.items():
        for name in ("fg_bg", "bg", "depth"):
            np.testing.assert_array_equal(first[name][g[key]], want[name][i])
        # the mask as training reads it (thresholded at 128): one bit a pixel in the cache, 0 or 255 when read
        np.testing.assert_array_equal(first["mask"][g[key]], (want["mask"][i] >= 128) * np.uint8(255))
    shards = sorted(root.rglob("shard-*.npz"))
    assert len(messages) == 1 and len(shards) == 5  # 24 rows in blocks of 5
    # what differs per sample and no more: the backgrounds stored once, beside the shards
    (backgrounds,) = root.rglob("backgrounds.npy")
    assert np.load(backgrounds).shape == (len(set(table["bg"].to_pylist())), 32, 32, 3)
    with np.load(shards[0]) as z:
        assert set(z.files) == {"fg_bg", "mask", "depth", "bad", "bg_index"} and z["mask"].shape == (5, 32 * 32 // 8)

    # a second run on the same data reads the shards: nothing decoded, nothing written; each pass in a new order
    orders = [np.concatenate(_collect(cached_dataset(table, config, str(root), say=messages.append, draws=Draws(0, start, 24))
                                      .iter_batches(batch_size=7, batch_format="numpy"))["fg_bg"]) for start in (0, 25, 50)]
    assert len(messages) == 1 and sorted(root.rglob("shard-*.npz")) == shards
    assert any(not np.array_equal(o, orders[0]) for o in orders[1:])
    # another size is another cache, and so is a batch written again
    key = cache_key(table, config)
    assert cache_key(table, IngestConfig(size=16)) != key
    zip_path = Path(table.column("source")[0].as_py())
    times = (zip_path.stat().st_atime_ns, zip_path.stat().st_mtime_ns)
    os.utime(zip_path, ns=(times[0], times[1] + 10**9))
    try:
        assert cache_key(table, config) != key
    finally:
        os.utime(zip_path, ns=times)  # the session's dataset, as the other tests know it
