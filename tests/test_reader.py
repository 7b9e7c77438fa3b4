import numpy as np
import pytest

from fgbg.errors import BadSample
from fgbg.layout import load_manifest
from fgbg.reader import augment, decode_batch, to_arrays
from original import rewrite_zip, write_original


def _rows(root):
    t = load_manifest(root).with_paths()
    return {k: np.array(t.column(k).to_pylist(), dtype=object) for k in t.column_names}


def test_decoded_shapes_ranges_and_values(tmp_path):
    root = write_original(tmp_path / "d", batches=1, form="zip-top")
    out = decode_batch(_rows(root), size=32)
    n = 12
    assert out["fg_bg"].shape == (n, 3, 32, 32) and out["bg"].shape == (n, 3, 32, 32)
    assert out["mask"].shape == (n, 1, 32, 32) and out["depth"].shape == (n, 1, 16, 16)
    assert all(v.dtype == np.float32 for k, v in out.items() if k != "bad") and out["bad"].sum() == 0
    assert set(np.unique(out["mask"])) == {0.0, 1.0}
    # the first sample: F=1, flip 0 → the rectangle is rows 8..19, columns 6..13
    assert out["mask"][0, 0, 8:20, 6:14].all() and out["mask"][0, 0].sum() == 12 * 8
    assert abs(out["fg_bg"][0, 0, 12, 10] - 250 / 255) < 0.05
    assert 0 <= out["depth"].min() and out["depth"].max() <= 1
    assert out["depth"][0, 0, -1].mean() > out["depth"][0, 0, 0].mean() + 0.8  # the gradient the writer drew


def test_resizes_to_the_configured_size(tmp_path):
    root = write_original(tmp_path / "d", batches=1)
    out = decode_batch(_rows(root), size=16, depth_size=8)
    assert out["fg_bg"].shape[-2:] == (16, 16) and out["depth"].shape[-2:] == (8, 8)
    assert out["mask"][0, 0, 4:10, 3:7].all()


def test_augmentation_jitters_inputs_only_and_flips_jointly():
    rng = np.random.default_rng(0)
    sample = {
        "fg_bg": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "bg": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "mask": np.zeros((8, 8), np.uint8),
        "depth": np.tile(np.arange(4, dtype=np.uint8)[None] * 60, (4, 1)),
    }
    sample["mask"][:, :2] = 255
    base = to_arrays(sample)
    flips = 0
    for seed in range(20):
        out = augment(base, np.random.default_rng(seed))
        flipped = out["mask"][0, 0, -1] == 1
        flips += flipped
        want = {k: base[k][..., ::-1] if flipped else base[k] for k in ("mask", "depth")}
        np.testing.assert_array_equal(out["mask"], want["mask"])  # targets: moved, never jittered
        np.testing.assert_array_equal(out["depth"], want["depth"])
        assert not np.allclose(out["fg_bg"], base["fg_bg"][..., ::-1] if flipped else base["fg_bg"])
        assert out["fg_bg"].min() >= 0 and out["fg_bg"].max() <= 1
    assert 3 <= flips <= 17


@pytest.mark.parametrize(
    "damage, what",
    [
        (b"\xff\xd8\xff\xe0 garbage", "undecodable or truncated JPEG"),
        ("truncate", "undecodable or truncated JPEG"),
        (b"\x89PNG\r\n\x1a\n", "undecodable or truncated JPEG"),
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
