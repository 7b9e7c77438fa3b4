import os
import zipfile

import pytest

from fgbg.errors import FgbgError
from fgbg.layout import MANIFEST_NAME, Draws, find_batches, load_manifest
from fgbg.reader import read_member

from original import jpeg, rewrite_zip, write_original


@pytest.mark.parametrize("form", ["zip", "zip-top", "dir"])
def test_reads_every_form_of_the_original_layout(tmp_path, form):
    root = write_original(tmp_path / "data", batches=3, form=form)
    m = load_manifest(root)
    assert len(m) == 3 * 2 * 3 * 2  # batches × backgrounds × foregrounds × flips
    assert m.problems == []
    row = m.table.slice(0, 1).to_pylist()[0]
    top = "batch1_images/" if form == "zip-top" else ""
    names = {k: v for k, v in row.items() if not k.endswith(("_offset", "_bytes"))}
    assert names == {
        "batch": 1,
        "source": "batch1" if form == "dir" else "batch1_images.zip",
        "sample": "1_1_0_1",
        "fg_bg": f"{top}fg_bg_jpg/fg_bg_1_1_0_1.jpg",
        "bg": f"{top}bg_jpg/bg_img_1.jpg",
        "mask": f"{top}mask_black_jpg/bg_mask_1_1_0_1.jpg",
        "depth": f"{top}depth_fg_bg_jpg/depth_fg_bg_1_1_0_1.jpg",
    }
    # where each file lies in its zip: read from there, the same bytes as through the zip's directory (none in a folder)
    for kind in ("fg_bg", "bg", "mask", "depth"):
        at = (row[f"{kind}_offset"], row[f"{kind}_bytes"])
        if form == "dir":
            assert at == (-1, -1)
        else:
            with zipfile.ZipFile(root / "batch1_images.zip") as zf:
                assert read_member(str(root / "batch1_images.zip"), row[kind], at) == zf.read(row[kind])


def test_default_split_is_last_batch_for_test_and_configurable(tmp_path):
    m = load_manifest(write_original(tmp_path / "data", batches=3))
    split = m.split()
    assert set(split["train"].column("batch").to_pylist()) == {1, 2}
    assert set(split["test"].column("batch").to_pylist()) == {3}
    split = m.split([1])
    assert set(split["test"].column("batch").to_pylist()) == {1}
    with pytest.raises(FgbgError, match=r"test batches \[7\]"):
        m.split([7])


def test_batches_sorted_by_number_and_folder_wins_over_zip(tmp_path):
    root = write_original(tmp_path / "data", batches=2)
    (root / "batch10_images.zip").write_bytes((root / "batch2_images.zip").read_bytes())
    (root / "batch1").mkdir()
    (root / "notes.txt").write_text("not a batch")
    batches = find_batches(root)
    assert [(b.index, b.name) for b in batches] == [(1, "batch1"), (2, "batch2_images.zip"), (10, "batch10_images.zip")]


def test_missing_partner_and_orphans_are_problems_naming_zip_and_member(tmp_path):
    root = write_original(tmp_path / "data", batches=1)
    rewrite_zip(
        root / "batch1_images.zip",
        {
            "mask_black_jpg/bg_mask_2_1_0_1.jpg": None,
            "depth_fg_bg_jpg/depth_fg_bg_9_9_0_1.jpg": jpeg(__import__("numpy").zeros((16, 16), "uint8")),
        },
    )
    m = load_manifest(root)
    assert len(m) == 11
    texts = [str(p) for p in m.problems]
    assert texts == [
        "batch1_images.zip: fg_bg_jpg/fg_bg_2_1_0_1.jpg: missing partner file mask_black_jpg/bg_mask_2_1_0_1.jpg",
        "batch1_images.zip: depth_fg_bg_jpg/depth_fg_bg_9_9_0_1.jpg: no fg_bg_jpg/fg_bg_9_9_0_1.jpg for it",
    ]


def test_not_a_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(FgbgError, match="not a dataset folder"):
        load_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FgbgError, match=r"no batches found \(expected batch\{K\}_images.zip"):
        load_manifest(tmp_path / "empty")


def test_unreadable_zip_is_a_problem_of_that_batch(tmp_path):
    root = write_original(tmp_path / "data", batches=2)
    (root / "batch2_images.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    m = load_manifest(root)
    assert len(m) == 12
    assert len(m.problems) == 1 and m.problems[0].source == "batch2_images.zip"
    assert "unreadable zip" in m.problems[0].what


def test_manifest_is_cached_next_to_data_and_rebuilt_when_a_batch_changes(tmp_path):
    root = write_original(tmp_path / "data", batches=2)
    first = load_manifest(root)
    cache = root / MANIFEST_NAME
    assert cache.is_file()
    mtime = cache.stat().st_mtime_ns
    again = load_manifest(root)
    assert again.table.equals(first.table) and cache.stat().st_mtime_ns == mtime  # read, not rebuilt
    rewrite_zip(root / "batch2_images.zip", {"fg_bg_jpg/fg_bg_1_3_0_1.jpg": None})
    os.utime(root / "batch2_images.zip", ns=(1, 1))
    changed = load_manifest(root)
    assert len(changed) == len(first) - 1
    assert len(changed.problems) == 2  # the mask and depth left without their fg_bg


def test_unwritable_dataset_caches_under_the_cache_home(tmp_path, monkeypatch):
    root = write_original(tmp_path / "data", batches=1, form="dir")
    monkeypatch.setenv("FGBG_CACHE", str(tmp_path / "home-cache"))
    (root / MANIFEST_NAME).mkdir()  # the place next to the data cannot take a file (as root, chmod would not stop us)
    first = load_manifest(root)
    assert len(list((tmp_path / "home-cache").glob("manifest-*.parquet"))) == 1
    assert load_manifest(root).table.equals(first.table)


def test_explicit_cache_dir(tmp_path):
    root = write_original(tmp_path / "data", batches=1)
    load_manifest(root, cache_dir=tmp_path / "c")
    assert not (root / MANIFEST_NAME).exists()
    assert len(list((tmp_path / "c").glob("manifest-*.parquet"))) == 1
    assert zipfile.is_zipfile(root / "batch1_images.zip")


def test_draws_take_every_sample_once_a_pass_each_pass_in_its_own_order_and_go_on_where_they_stood():
    run = Draws(seed=3, start=0, count=25).indices(10)
    first, second = run[:10], run[10:20]
    assert sorted(first) == sorted(second) == list(range(10)) and list(first) != list(second)
    assert list(run[20:]) == list(Draws(3, 20, 5).indices(10)) == list(Draws(3, 0, 30).indices(10)[20:25])
    assert list(Draws(3, 7, 9).indices(10)) == list(run[7:16])  # an epoch that starts where the last stopped: a resume
    assert list(Draws(4, 0, 10).indices(10)) != list(first)  # another seed, another order
