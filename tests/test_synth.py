import hashlib
import io
import zipfile

import numpy as np
from PIL import Image

from fgbg.layout import load_manifest
from fgbg.synth import SynthSpec, render_sample, sample_grid, write_dataset


def _digest(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.zip"))}


def test_same_seed_same_bytes_in_process_and_in_parallel(tmp_path):
    spec = dict(batches=2, per_batch=30, size=32, seed=7)
    a = write_dataset(SynthSpec(str(tmp_path / "a"), **spec), workers=0)
    b = write_dataset(SynthSpec(str(tmp_path / "b"), **spec), workers=2)
    c = write_dataset(SynthSpec(str(tmp_path / "c"), **{**spec, "seed": 8}), workers=0)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_layout_counts_and_grid(tmp_path):
    root = write_dataset(SynthSpec(str(tmp_path / "d"), batches=3, per_batch=25, size=32, format="dir"), workers=0)
    m = load_manifest(root)
    assert len(m) == 75 and m.problems == []
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["batch1", "batch2", "batch3"]
    grid = sample_grid(SynthSpec("x", per_batch=25), batch=2)
    assert len(set(grid)) == 25
    f, b, flip, pos = zip(*grid)
    assert min(b) >= 11 and max(b) <= 20  # batch 2 owns backgrounds 11..20, as the original's batches own theirs
    assert set(flip) <= {0, 1} and max(f) <= 100 and max(pos) <= 20


def test_images_have_the_original_sizes_and_modes(synth_data):
    with zipfile.ZipFile(synth_data / "batch1_images.zip") as zf:
        names = zf.namelist()
        key = next(n for n in names if n.startswith("fg_bg_jpg/"))[len("fg_bg_jpg/fg_bg_") :]
        fg_bg = Image.open(io.BytesIO(zf.read("fg_bg_jpg/fg_bg_" + key)))
        mask = Image.open(io.BytesIO(zf.read("mask_black_jpg/bg_mask_" + key)))
        depth = Image.open(io.BytesIO(zf.read("depth_fg_bg_jpg/depth_fg_bg_" + key)))
    assert (fg_bg.format, fg_bg.mode, fg_bg.size) == ("JPEG", "RGB", (32, 32))
    assert (mask.mode, mask.size) == ("L", (32, 32))
    assert (depth.mode, depth.size) == ("L", (16, 16))


def test_content_is_a_plausible_scene():
    """The object changes the image where the mask is; depth nears towards the bottom; the object
    is about as near as the ground it stands on."""
    found = 0
    for fg in range(1, 30):
        s = render_sample(seed=0, fg_id=fg, bg_id=3, flip=fg % 2, pos=fg, size=96)
        mask = s["mask"] >= 128
        if mask.sum() < 30:
            continue
        found += 1
        depth = np.asarray(Image.fromarray(s["depth"]).resize((96, 96)), np.float32)
        from fgbg.scenes import make_scene

        bg = (np.clip(make_scene(0, 3, 96).image, 0, 1) * 255).astype(np.float32)
        diff = np.abs(s["fg_bg"].astype(np.float32) - bg).mean(-1)
        assert diff[mask].mean() > 2 * diff[~mask].mean()  # the change is where the mask says
        assert depth[-4:].mean() > depth[:4].mean()  # the bottom of the frame is nearer than the top
        rows = np.nonzero(mask.any(1))[0]
        assert depth[mask].mean() > depth[: max(rows.min(), 1)].mean() - 5  # the object is not behind the scenery above it
    assert found >= 10


def test_foregrounds_vary_in_size_and_colour():
    areas, colours = [], []
    for fg in range(1, 40):
        s = render_sample(seed=0, fg_id=fg, bg_id=1, flip=0, pos=1, size=64)
        m = s["mask"] >= 128
        areas.append(m.mean())
        if m.sum() > 10:
            colours.append(s["fg_bg"][m].mean(0))
    assert np.std(areas) > 0.01 and max(areas) > 3 * np.median(areas)
    assert np.std(np.array(colours), axis=0).mean() > 20


def test_texture_shares_change_only_the_objects_pixels_and_scene_textures_camouflage_them():
    """The same grid cell with drawn textures only (the generator before the options) and with every object textured
    from a picture and then from its own background: masks, depth and every pixel off the object are the same; on
    the object, the scene's own texture leaves less difference from the background than a drawn one."""
    from fgbg.scenes import make_scene

    diffs = {}
    for shares in ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)):
        samples = [render_sample(0, fg, 2, 0, fg, 64, *shares) for fg in range(1, 25)]
        if shares == (0.0, 0.0):
            drawn = samples
        for a, b in zip(drawn, samples):
            assert (a["mask"] == b["mask"]).all() and (a["depth"] == b["depth"]).all()
            off = a["mask"] == 0
            assert (a["fg_bg"][off] == b["fg_bg"][off]).all()
        assert any((a["fg_bg"] != b["fg_bg"]).any() for a, b in zip(drawn, samples)) == (shares != (0.0, 0.0))
        bg = (np.clip(make_scene(0, 2, 64).image, 0, 1) * 255).astype(np.float32)
        diffs[shares] = np.mean([np.abs(s["fg_bg"].astype(np.float32) - bg)[s["mask"] >= 128].mean() for s in samples if (s["mask"] >= 128).sum() > 10])
    assert diffs[(1.0, 1.0)] < 0.8 * diffs[(0.0, 0.0)]


def test_cast_shadows_darken_the_ground_outside_the_mask_and_change_nothing_else():
    for fg in range(1, 9):
        plain, shaded = (render_sample(0, fg, 2, fg % 2, fg, 64, cast_shadows=share) for share in (0.0, 1.0))
        assert (plain["mask"] == shaded["mask"]).all() and (plain["depth"] == shaded["depth"]).all()
        a, b = plain["fg_bg"].astype(np.int16), shaded["fg_bg"].astype(np.int16)
        outside = plain["mask"] < 8
        assert (b[outside].sum(-1) < a[outside].sum(-1) - 6).sum() >= 6  # a visible shadow, off the object
        assert (b.sum(-1) <= a.sum(-1)).all()  # only darker: the same noise draws on a darker ground
