"""Decoded uint8 batches to the model's tensors: layout, ranges, and training augmentation."""

import numpy as np
import pytest
import torch
from test_reader import _rows

from fgbg.batch import prepare_batch
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
