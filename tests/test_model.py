import pytest
import torch
from torch import nn

from fgbg.model import UNet, _DenseGrad, infer, stage_widths
from fgbg.profiling import count_macs


@pytest.mark.parametrize("size", [32, 64, 96])
@pytest.mark.parametrize("kw", [{}, {"width": 0.25}, {"widths": (8, 8, 16, 16, 24)}, {"width": 0.25, "separate_decoders": True},
                                {"width": 0.25, "diff_input": True}])
def test_output_shapes(size, kw):
    model = UNet(**kw)
    x = torch.rand(2, 3, size, size)
    mask_logits, depth = model(x, x)
    assert mask_logits.shape == (2, 1, size, size)
    assert depth.shape == (2, 1, size // 2, size // 2)
    assert depth.min() >= 0 and depth.max() <= 1


def test_width_one_matches_the_design_size():
    model = UNet()
    assert model.widths == (32, 64, 128, 256, 256)
    params = sum(p.numel() for p in model.parameters())
    assert 500_000 <= params <= 750_000
    macs = count_macs(model, 160)
    assert 0.85e9 <= macs <= 0.90e9  # the original reports 892.8M
    assert not any(hasattr(m, "total_ops") for m in model.modules())  # thop ran on a copy


def test_width_scales_every_stage_and_separate_decoders_add_parameters():
    assert stage_widths(0.5) == (16, 32, 64, 128, 128)
    assert stage_widths(0.1) == (4, 8, 12, 24, 24)
    shared = sum(p.numel() for p in UNet(width=0.5).parameters())
    separate = sum(p.numel() for p in UNet(width=0.5, separate_decoders=True).parameters())
    assert separate > shared
    with pytest.raises(ValueError, match="5 positive"):
        UNet(widths=(8, 8, 8))


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    model = UNet(width=0.25).eval()
    x, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    ref = model(x, b)
    cl = model.to(memory_format=torch.channels_last)
    out = cl(x.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last))
    for a, c in zip(ref, out):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


def test_upsampling_gets_a_dense_gradient_and_the_same_gradients_as_without():
    torch.manual_seed(0)
    x = torch.rand(2, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    skip = torch.rand(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    dense = {}
    for wrapped in (True, False):
        y = _DenseGrad.apply(x) if wrapped else x.view_as(x)
        torch.testing.assert_close(y, x)
        out = torch.cat([skip, y], dim=1)
        (grad,) = torch.autograd.grad((out * torch.arange(16.0).view(1, 16, 1, 1)).sum(), x)
        torch.testing.assert_close(grad, torch.arange(8.0, 16.0).view(1, 8, 1, 1).expand(2, 8, 6, 6))
        dense[wrapped] = grad.is_contiguous(memory_format=torch.channels_last)
    assert dense == {True: True, False: False}  # cat's backward gives a slice of the channels, dense in neither layout


def test_diff_input_adds_three_input_channels_and_sees_the_difference():
    plain, diff = UNet(width=0.25), UNet(width=0.25, diff_input=True)
    assert plain.inc[0][0].in_channels == 6 and diff.inc[0][0].in_channels == 9
    # only the first depthwise and pointwise convolutions grow: 3 depthwise filters of 9, and 3 inputs per pointwise output
    extra = sum(p.numel() for p in diff.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * 9 + 3 * 2 + 3 * diff.widths[0]  # depthwise 3×3 weights, their BatchNorm, pointwise weights
    for block in (True, False):  # the default's budget (issue #16), with either block
        model = UNet(diff_input=True, depthwise_norm=block)
        assert sum(p.numel() for p in model.parameters()) <= 900_000 and count_macs(model, 160) <= 1.0e9


def test_without_depthwise_norm_only_the_pointwise_convolutions_are_normalised():
    mobilenet, xception = UNet(width=0.25), UNet(width=0.25, depthwise_norm=False)
    norms = [[m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)] for model in (mobilenet, xception)]
    depthwise = [m.in_channels for m in xception.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(norms[0]) == 2 * len(norms[1]) == 2 * len(depthwise)
    assert sorted(norms[0]) == sorted(norms[1] + depthwise)  # what goes: one BatchNorm per depthwise convolution, of its width
    assert isinstance(xception.inc[0][1], nn.Conv2d) and xception.inc[0][1].kernel_size == (1, 1)  # pointwise right after
    x = torch.rand(2, 3, 32, 32)
    assert [t.shape for t in xception(x, x)] == [t.shape for t in mobilenet(x, x)]


def test_build_model_follows_the_config():
    from fgbg.config import Config
    from fgbg.model import build_model

    model = build_model(Config(width=0.5, separate_decoders=True, diff_input=True))
    assert model.widths == stage_widths(0.5) and model.depth_decoder is not None and model.diff_input
    assert not isinstance(model.inc[0][1], nn.BatchNorm2d)  # the default block: no norm right after the depthwise convolution
    assert isinstance(build_model(Config(width=0.5, depthwise_norm=True)).inc[0][1], nn.BatchNorm2d)


def test_flip_averages_the_pair_and_its_mirror_so_a_mirrored_pair_gets_the_mirrored_answer():
    torch.manual_seed(0)
    model = UNet(width=0.25).eval()
    x, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        (mask, depth), (mask_m, depth_m) = model(x, b), model(x.flip(-1), b.flip(-1))
        flipped = infer(model, x, b, flip=True)
        mirrored = infer(model, x.flip(-1), b.flip(-1), flip=True)
    torch.testing.assert_close(flipped[0], (mask + mask_m.flip(-1)) / 2)
    torch.testing.assert_close(flipped[1], (depth + depth_m.flip(-1)) / 2)
    assert not torch.allclose(flipped[0], mask)  # an untrained model is not symmetric: the mirror changes the answer
    for a, m in zip(flipped, mirrored):
        torch.testing.assert_close(m, a.flip(-1))
    assert all(torch.equal(a, c) for a, c in zip(infer(model, x, b), (mask, depth)))  # without flip: the model's own outputs
