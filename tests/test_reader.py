import zipfile

import numpy as np
import pytest

from fgbg.errors import BadSample
from fgbg.layout import load_manifest
from fgbg.reader import decode_batch, read_member

from original import rewrite_zip, write_original


def _rows(root):
    t = load_manifest(root).with_paths()
    return {k: np.array(t.column(k).to_pylist(), dtype=object) for k in t.column_names}


def test_decoded_shapes_and_values(tmp_path):
    root = write_original(tmp_path / "d", batches=1, form="zip-top")
    out = decode_batch(_rows(root), size=32)
    n = 12
    assert out["fg_bg"].shape == (n, 32, 32, 3) and out["bg"].shape == (n, 32, 32, 3)
    assert out["mask"].shape == (n, 32, 32, 1) and out["depth"].shape == (n, 16, 16, 1)
    assert all(v.dtype == np.uint8 for v in out.values()) and out["bad"].sum() == 0
    # the first sample: F=1, flip 0 → the rectangle is rows 8..19, columns 6..13
    mask = out["mask"][0, ..., 0] >= 128
    assert mask[8:20, 6:14].all() and mask.sum() == 12 * 8
    assert abs(int(out["fg_bg"][0, 12, 10, 0]) - 250) < 13
    assert out["depth"][0, -1].mean() > out["depth"][0, 0].mean() + 0.8 * 255  # the gradient the writer drew


def test_resizes_to_the_configured_size(tmp_path):
    root = write_original(tmp_path / "d", batches=1)
    out = decode_batch(_rows(root), size=16, depth_size=8)
    assert out["fg_bg"].shape[1:3] == (16, 16) and out["depth"].shape[1:3] == (8, 8)
    assert (out["mask"][0, 4:10, 3:7] >= 128).all()


@pytest.mark.parametrize(
    "damage, what",
    [
        (b"\xff\xd8\xff\xe0 garbage", "undecodable or truncated JPEG"),
        ("truncate", "undecodable or truncated JPEG"),
        (b"\x89PNG\r\n\x1a\n", "undecodable or truncated JPEG"),
        (b"not an image at all", "not a JPEG image"),
    ],
)
def test_bad_file_raises_naming_zip_and_member_or_is_skipped(tmp_path, damage, what):
    root = write_original(tmp_path / "d", batches=1)
    member = "fg_bg_jpg/fg_bg_2_1_1_1.jpg"
    if damage == "truncate":
        import zipfile

        with zipfile.ZipFile(root / "batch1_images.zip") as zf:
            damage = zf.read(member)[:200]
    rewrite_zip(root / "batch1_images.zip", {member: damage})
    rows = _rows(root)
    with pytest.raises(BadSample) as err:
        decode_batch(rows, size=32)
    assert f"batch1_images.zip: {member}: {what}" in str(err.value)
    out = decode_batch(rows, size=32, on_bad="skip")
    assert out["bad"].tolist() == [1 if m == member else 0 for m in rows["fg_bg"]]


def test_missing_file_after_indexing_is_named(tmp_path):
    root = write_original(tmp_path / "d", batches=1, form="dir")
    rows = _rows(root)
    (root / "batch1" / "bg_jpg" / "bg_img_2.jpg").unlink()
    with pytest.raises(BadSample, match=r"batch1: bg_jpg/bg_img_2.jpg: missing"):
        decode_batch(rows, size=32)
    assert decode_batch(rows, size=32, on_bad="skip")["bad"].sum() == 6


def test_a_member_is_read_where_the_index_says_it_lies_stored_or_deflated(tmp_path):
    from fgbg.layout import Batch, list_members

    path = tmp_path / "batch1_images.zip"
    data = {"fg_bg_jpg/a.jpg": bytes(range(256)) * 40, "bg_jpg/b.jpg": b"x" * 5000}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fg_bg_jpg/a.jpg", data["fg_bg_jpg/a.jpg"], compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("bg_jpg/b.jpg", data["bg_jpg/b.jpg"], compress_type=zipfile.ZIP_STORED)
        long_extra = zipfile.ZipInfo("mask_black_jpg/c.jpg")  # an extra field longer than the reader's first read leaves room for
        long_extra.extra = b"\xfe\xca" + (196).to_bytes(2, "little") + bytes(196)
        zf.writestr(long_extra, data.setdefault("mask_black_jpg/c.jpg", b"mask" * 300))
    where = list_members(Batch(1, str(path)))
    for member, content in data.items():
        assert read_member(str(path), member, where[member]) == content
    # an index that no longer matches the zip (it was written again since) names the file and what is wrong
    with pytest.raises(BadSample, match=r"batch1_images.zip: bg_jpg/b.jpg: unreadable \(another file at"):
        read_member(str(path), "bg_jpg/b.jpg", where["fg_bg_jpg/a.jpg"])
