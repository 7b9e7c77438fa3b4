"""Decoded uint8 batches to the model's tensors: layout, ranges, and training augmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_reader import _rows

from fgbg.batch import paste_objects, prepare_batch
from fgbg.reader import decode_batch

from original import write_original

CPU = torch.device("cpu")


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_decoded_batch_becomes_float_nchw_in_the_models_memory_format(tmp_path, channels_last):
    decoded = decode_batch(_rows(write_original(tmp_path / "d", batches=1)), size=32)
    out = prepare_batch({k: torch.from_numpy(v) for k, v in decoded.items()}, CPU, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out["fg_bg"].shape == (12, 3, 32, 32) and out["mask"].shape == (12, 1, 32, 32) and out["depth"].shape == (12, 1, 16, 16)
    assert all(v.dtype == torch.float32 and v.is_contiguous(memory_format=fmt) for v in out.values())
    np.testing.assert_allclose(out["fg_bg"].numpy(), decoded["fg_bg"].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(out["mask"].numpy(), (decoded["mask"].transpose(0, 3, 1, 2) >= 128).astype(np.float32))
    assert 0 <= out["depth"].min() and out["depth"].max() <= 1


def test_augmentation_jitters_inputs_only_and_flips_jointly():
    g = torch.Generator().manual_seed(0)
    n = 64
    batch = {
        "fg_bg": torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=g),
        "bg": torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=g),
        "mask": torch.zeros(n, 8, 8, 1, dtype=torch.uint8),
        "depth": (torch.arange(4, dtype=torch.uint8) * 60).view(1, 1, 4, 1).expand(n, 4, 4, 1).contiguous(),
    }
    batch["mask"][:, :, :2] = 255
    base = prepare_batch(batch, CPU)
    out = prepare_batch(batch, CPU, generator=torch.Generator().manual_seed(1))
    flipped = out["mask"][:, 0, 0, -1] == 1
    for i in range(n):
        want = {k: base[k][i].flip(-1) if flipped[i] else base[k][i] for k in ("mask", "depth", "fg_bg")}
        assert torch.equal(out["mask"][i], want["mask"]) and torch.equal(out["depth"][i], want["depth"])  # targets: moved, never jittered
        assert not torch.allclose(out["fg_bg"][i], want["fg_bg"])
    assert out["fg_bg"].min() >= 0 and out["fg_bg"].max() <= 1
    assert 16 <= int(flipped.sum()) <= 48
    again = prepare_batch(batch, CPU, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(out[k], again[k]) for k in out)  # the generator decides every draw


def test_copy_paste_moves_another_samples_object_with_its_mask_and_depth():
    """Sample 0 has no object; pasting into every sample, it gets sample 1's: the same mask moved by an even shift,
    sample 1's pixels inside it with a soft edge, sample 1's depth under it. Samples without an object to take stay."""
    n, side = 4, 32
    level = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    batch = {"fg_bg": (0.2 * level).expand(n, 3, side, side).clone(), "bg": torch.full((n, 3, side, side), 0.9),
             "mask": torch.zeros(n, 1, side, side), "depth": (0.1 * level).expand(n, 1, side // 2, side // 2).clone()}
    batch["mask"][1, :, 4:12, 6:16] = 1
    out = paste_objects(batch, 1.0, torch.Generator().manual_seed(0))
    mask = out["mask"][0, 0]
    moved = [(dy, dx) for dy in range(0, side, 2) for dx in range(0, side, 2) if torch.equal(batch["mask"][1, 0].roll((dy, dx), (0, 1)), mask)]
    assert len(moved) == 1 and moved != [(0, 0)]
    core = (-F.max_pool2d(-mask[None, None], 3, 1, 1))[0, 0].bool()  # the object less a one-pixel edge
    ring = F.max_pool2d(mask[None, None], 3, 1, 1)[0, 0].bool()  # the object and a pixel around it
    image = out["fg_bg"][0]
    assert torch.all(image[:, core] == 0.2) and torch.all(image[:, ~ring] == 0.0)
    assert image[:, ring & ~core].min() > 0 and image[:, ring & ~core].max() < 0.2  # blended along the edge
    cover = F.avg_pool2d(mask[None, None], 2)[0, 0]
    assert torch.all(out["depth"][0, 0][cover == 1] == batch["depth"][1, 0, 0, 0]) and torch.all(out["depth"][0, 0][cover == 0] == 0)
    assert all(torch.equal(out[k][1:], batch[k][1:]) for k in batch) and torch.equal(out["bg"], batch["bg"])
    none = paste_objects(batch, 0.0, torch.Generator())
    assert all(torch.equal(none[k], batch[k]) for k in batch)


def test_a_camouflaged_paste_wears_the_background_around_it():
    """With scene 1, the pasted object's pixels are its own sample's background moved by 3–15% of the side, under
    one exposure factor in [0.85, 1.15]; its mask and depth are pasted as before."""
    n, side = 4, 32
    batch = {"fg_bg": torch.zeros(n, 3, side, side), "bg": 0.1 + 0.7 * torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1)),
             "mask": torch.zeros(n, 1, side, side), "depth": torch.zeros(n, 1, side // 2, side // 2)}
    batch["mask"][1, :, 4:14, 6:18] = 1
    batch["depth"][1, :, 2:7, 3:9] = 0.5
    out = paste_objects(batch, 1.0, torch.Generator().manual_seed(0), scene=1.0)
    mask = out["mask"][0, 0]
    core = (-F.max_pool2d(-mask[None, None], 3, 1, 1))[0, 0].bool()
    assert core.sum() > 40 and out["depth"][0].max() == 0.5
    inside = out["fg_bg"][0][:, core]
    fits = []
    for dy in range(-5, 6):
        for dx in range(-5, 6):
            ratio = inside / batch["bg"][0].roll((dy, dx), (1, 2))[:, core]
            if ratio.max() - ratio.min() < 1e-5:
                fits.append(((dy, dx), ratio.mean().item()))
    assert len(fits) == 1, fits
    (dy, dx), factor = fits[0]
    assert max(abs(dy), abs(dx)) >= 1 and 0.85 <= factor <= 1.15


def test_blow_up_blurs_a_share_of_the_pairs_alike_and_keeps_the_targets_sharp():
    from fgbg.batch import BLOW_UP, blow_up

    g = torch.Generator().manual_seed(0)
    n, side = 64, 40
    noise = torch.rand(n, 3, side, side, generator=g)
    batch = {"fg_bg": noise, "bg": noise.clone(), "mask": (torch.rand(n, 1, side, side, generator=g) > 0.5).float(),
             "depth": torch.rand(n, 1, side // 2, side // 2, generator=g)}
    out = blow_up(batch, 0.5, g)
    assert out["mask"] is batch["mask"] and out["depth"] is batch["depth"]
    changed = (out["fg_bg"] != batch["fg_bg"]).flatten(1).any(1)
    assert 16 < changed.sum() < 48  # about half the samples
    assert torch.equal(out["fg_bg"], out["bg"])  # the pair alike: their difference shows no seam
    # a blown-up picture is smoother: its neighbouring pixels differ less than the noise's
    roughness = (out["fg_bg"][..., 1:] - out["fg_bg"][..., :-1]).abs().mean(dim=(1, 2, 3))
    assert (roughness[changed] < 0.7 * roughness[~changed].min()).all()
    assert len(BLOW_UP) >= 2 and all(0 < f < 1 for f in BLOW_UP)
