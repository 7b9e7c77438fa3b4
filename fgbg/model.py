"""The depthwise-separable UNet: (fg_bg, bg) → (mask logits at full size, depth at half size)."""

from __future__ import annotations

import torch
from torch import nn

STAGES = (32, 64, 128, 256, 256)  # encoder widths at width 1.0, full size down to 1/16


class SeparableConv(nn.Sequential):
    """A depthwise 3×3 convolution then a pointwise 1×1 one with BatchNorm and ReLU; with depthwise_norm, BatchNorm and
    ReLU after the depthwise one too (MobileNet's block, fgbg's before 2026-12-02). Without them (Xception's block) a
    training step on the CPU is 1.4–1.5× as fast (docs/benchmarks.md, "Train step"): at small widths the normalisation
    costs as much as the convolutions."""

    def __init__(self, in_ch: int, out_ch: int, depthwise_norm: bool = True):
        depthwise = [nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False)]
        if depthwise_norm:
            depthwise += [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)]
        super().__init__(*depthwise, nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two separable convolutions: one UNet stage."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None, depthwise_norm: bool = True):
        mid = mid_ch or out_ch
        super().__init__(SeparableConv(in_ch, mid, depthwise_norm), SeparableConv(mid, out_ch, depthwise_norm))


class Down(nn.Sequential):
    """Max-pool by 2, then a stage."""

    def __init__(self, in_ch: int, out_ch: int, depthwise_norm: bool = True):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch, depthwise_norm=depthwise_norm))


class _DenseGrad(torch.autograd.Function):
    """The identity, whose backward hands its gradient on dense in the input's memory format.

    torch.cat's backward gives each input a slice of the channels, which in channels_last is dense in neither
    layout; bilinear upsampling's backward takes a slow path on such a gradient (about 3× as long on a CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


class Up(nn.Module):
    """Bilinear upsampling by 2, concatenation with the skip connection, then a stage."""

    def __init__(self, in_ch: int, out_ch: int, depthwise_norm: bool = True):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = DoubleConv(in_ch, out_ch, mid_ch=in_ch, depthwise_norm=depthwise_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, _DenseGrad.apply(self.up(x))], dim=1))


class Decoder(nn.Module):
    """Up stages from the bottleneck: to half size (for depth), then on to full size (for the mask)."""

    def __init__(self, widths: tuple[int, ...], to_full: bool = True, depthwise_norm: bool = True):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.to_half = nn.ModuleList([Up(a, b, depthwise_norm) for a, b in ((w4 + w3, w2), (w2 + w2, w1), (w1 + w1, w0))])
        self.to_full = Up(w0 + w0, w0, depthwise_norm) if to_full else None

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
        x = feats[4]
        for up, skip in zip(self.to_half, (feats[3], feats[2], feats[1])):
            x = up(x, skip)
        return (self.to_full(x, feats[0]) if self.to_full is not None else None), x


def stage_widths(width: float = 1.0, widths: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Encoder widths: explicit per-stage widths, else STAGES × width (at least 4, multiples of 4)."""
    if widths is not None:
        if len(widths) != 5 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be 5 positive channel counts, got {widths}")
        return tuple(int(w) for w in widths)
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return tuple(max(4, int(round(w * width / 4)) * 4) for w in STAGES)


class UNet(nn.Module):
    """Mask and depth from fg_bg and bg; image sides must be multiples of 16.

    width scales every stage (the sweep's "depthwise widths" knob); widths sets each stage;
    separate_decoders gives depth its own decoder (the original shares one); diff_input hands the
    network the comparison it must otherwise learn: |fg_bg − bg| as 3 more input channels (the
    original has only the 6 channels of the two images); depthwise_norm chooses the block (SeparableConv).
    """

    def __init__(self, width: float = 1.0, widths: tuple[int, ...] | None = None, separate_decoders: bool = False,
                 diff_input: bool = False, depthwise_norm: bool = True):
        super().__init__()
        self.widths = w = stage_widths(width, widths)
        self.diff_input = diff_input
        self.inc = DoubleConv(9 if diff_input else 6, w[0], depthwise_norm=depthwise_norm)
        self.downs = nn.ModuleList(Down(a, b, depthwise_norm) for a, b in zip(w[:-1], w[1:]))
        self.decoder = Decoder(w, depthwise_norm=depthwise_norm)
        self.depth_decoder = Decoder(w, to_full=False, depthwise_norm=depthwise_norm) if separate_decoders else None
        self.mask_head = nn.Conv2d(w[0], 1, 1)
        self.depth_head = nn.Conv2d(w[0], 1, 1)

    def forward(self, fg_bg: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = [fg_bg, bg, (fg_bg - bg).abs()] if self.diff_input else [fg_bg, bg]
        feats = [self.inc(torch.cat(images, dim=1))]
        for down in self.downs:
            feats.append(down(feats[-1]))
        full, half = self.decoder(feats)
        if self.depth_decoder is not None:
            _, half = self.depth_decoder(feats)
        return self.mask_head(full), torch.sigmoid(self.depth_head(half))


def infer(model: nn.Module, fg_bg: torch.Tensor, bg: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mask logits and depth; with flip, each the mean over the pair as it is and mirrored left to right
    (test-time augmentation, one pass of twice the batch: about +0.003 IoU in docs/experiments.md, "Test-time mirroring", for twice the compute)."""
    if not flip:
        return model(fg_bg, bg)
    n = len(fg_bg)
    mask_logits, depth = model(torch.cat([fg_bg, fg_bg.flip(-1)]), torch.cat([bg, bg.flip(-1)]))
    return (mask_logits[:n] + mask_logits[n:].flip(-1)) / 2, (depth[:n] + depth[n:].flip(-1)) / 2


def build_model(cfg) -> UNet:
    """The UNet a Config describes (fgbg.config.Config: width, widths, separate_decoders, diff_input, depthwise_norm)."""
    return UNet(width=cfg.width, widths=tuple(cfg.widths) if cfg.widths else None,
                separate_decoders=cfg.separate_decoders, diff_input=cfg.diff_input, depthwise_norm=cfg.depthwise_norm)
