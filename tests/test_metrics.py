import pytest
import torch

from fgbg.losses import PARTS, MaskDepthLoss, depth_ssim, depth_ssim_loss, lovasz_hinge_loss, soft_dice_loss
from fgbg.metrics import SetMetrics, per_image, threshold_iou, threshold_mask
from fgbg.pictures import COLUMNS, LABEL_PX, TITLE_PX, result_grid


def _logits(mask):
    return torch.where(mask > 0, 5.0, -5.0)


def test_iou_per_image_and_flattened_by_hand():
    # image 1: true 4 pixels, predicted 2 of them + 2 others → inter 2, union 6
    true1 = torch.zeros(4, 4)
    true1[0, :] = 1
    pred1 = torch.zeros(4, 4)
    pred1[0, :2] = 1
    pred1[1, :2] = 1
    # image 2: perfect on 8 pixels → inter 8, union 8
    true2 = torch.zeros(4, 4)
    true2[2:, :] = 1
    pred2 = true2.clone()
    m = SetMetrics()
    depth = torch.full((2, 1, 12, 12), 0.5)
    m.update(_logits(torch.stack([pred1, pred2])[:, None]), depth, torch.stack([true1, true2])[:, None], depth)
    r = SetMetrics.compute(m.sums)
    assert r["iou"] == pytest.approx((2 / 6 + 1) / 2)
    assert r["iou_flat"] == pytest.approx(10 / 14)
    assert r["samples"] == 2
    # the same per image, as predict's table lists them
    each = per_image(_logits(torch.stack([pred1, pred2])[:, None]), depth, torch.stack([true1, true2])[:, None], depth + 0.25)
    assert each["iou"].tolist() == pytest.approx([2 / 6, 1.0]) and each["sq_err"].tolist() == pytest.approx([144 / 16] * 2)


def test_a_result_grid_titles_its_columns_and_gives_each_rows_iou():
    true = torch.zeros(2, 1, 32, 32)
    true[:, :, 8:24, 8:24] = 1
    logits = _logits(torch.stack([true[0], torch.zeros_like(true[0])]))  # row 1: perfect; row 2: nothing found
    images, depth = torch.full((2, 3, 32, 32), 0.5), torch.full((2, 1, 16, 16), 0.5)
    grid = result_grid({"bg": images, "fg_bg": images, "mask": true, "depth": depth}, logits, depth)
    assert grid.shape == (TITLE_PX + 2 * 128, LABEL_PX + len(COLUMNS) * 128, 3)
    titles = grid[:TITLE_PX, LABEL_PX:].min(axis=2).reshape(TITLE_PX, len(COLUMNS), 128)
    assert (titles < 128).any(axis=(0, 2)).all()  # dark text over every column
    first, second = (grid[TITLE_PX + 128 * r : TITLE_PX + 128 * (r + 1), :LABEL_PX] for r in (0, 1))
    assert (first < 128).any() and (second < 128).any() and (first != second).any()  # "IoU 1.000" and "IoU 0.000"


def test_empty_masks_count_as_perfect_and_threshold_is_half_probability():
    m = SetMetrics()
    depth = torch.full((1, 1, 12, 12), 0.5)
    empty = torch.zeros(1, 1, 4, 4)
    m.update(torch.full((1, 1, 4, 4), -0.01), depth, empty, depth)  # sigmoid < 0.5 everywhere
    assert SetMetrics.compute(m.sums)["iou"] == 1.0
    m = SetMetrics()
    m.update(torch.full((1, 1, 4, 4), 0.01), depth, empty + 1, depth)  # sigmoid > 0.5 everywhere
    assert SetMetrics.compute(m.sums)["iou"] == 1.0


def test_depth_metrics_by_hand_and_sums_add_up_across_parts():
    true = torch.full((1, 1, 12, 12), 0.5)
    pred = true.clone()
    pred[0, 0, 3, 4] = 0.9
    mask = torch.zeros(1, 1, 4, 4)
    whole = SetMetrics()
    whole.update(_logits(torch.cat([mask, mask])), torch.cat([pred, true]), torch.cat([mask, mask]), torch.cat([true, true]))
    r = SetMetrics.compute(whole.sums)
    assert r["rmse"] == pytest.approx((0.4**2 / 288) ** 0.5)
    assert r["delta1"] == pytest.approx(287 / 288)  # 0.9 / 0.5 = 1.8 fails, the rest are exact
    assert r["ssim"] < 1 and r["ssim"] > 0.5
    # two "workers" each seeing one image: their summed sums give the same metrics
    a, b = SetMetrics(), SetMetrics()
    a.update(_logits(mask), pred, mask, true)
    b.update(_logits(mask), true, mask, true)
    assert SetMetrics.compute(a.sums + b.sums) == pytest.approx(r)


def test_loss_is_weighted_sum_of_parts_and_ssim_of_identical_depth_is_one():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    depth = torch.rand(2, 1, 16, 16)
    total, parts = MaskDepthLoss(w_mask=2.0, w_depth=3.0, w_depth_l1=0.5)(logits, depth, mask, depth)
    parts = {k: v.item() for k, v in parts.items()}
    assert parts["loss_depth_ssim"] == pytest.approx(0.0, abs=1e-5)
    assert parts["loss_depth_l1"] == 0.0
    assert total.item() == pytest.approx(2.0 * parts["loss_mask"], rel=1e-5)
    other = torch.rand(2, 1, 16, 16)
    total, parts = MaskDepthLoss(1.0, 1.0)(logits, other, mask, depth)
    parts = {k: v.item() for k, v in parts.items()}
    assert total.item() == pytest.approx(parts["loss_mask"] + parts["loss_depth_ssim"], rel=1e-5)
    assert parts["loss_depth_ssim"] > 0.5 and "loss_depth_l1" not in parts


@pytest.mark.parametrize("shape", [(3, 1, 80, 80), (2, 1, 8, 8), (2, 1, 24, 40)])
def test_the_loss_ssim_is_torchmetrics_ssim_in_value_and_gradient(shape):
    torch.manual_seed(0)
    true = torch.rand(shape, dtype=torch.float64)
    depth = (true + 0.2 * torch.randn(shape, dtype=torch.float64)).clamp(0, 1).requires_grad_()
    reference = depth_ssim(depth, true)
    (grad_reference,) = torch.autograd.grad(reference, depth)
    ours_in = depth.detach().float().requires_grad_()
    ours = depth_ssim_loss(ours_in, true.float())
    (grad_ours,) = torch.autograd.grad(ours, ours_in)
    assert 0.05 < reference.item() < 0.95
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)
    torch.testing.assert_close(grad_ours, grad_reference.float(), atol=1e-5 * grad_reference.abs().max().item(), rtol=1e-4)


def _half_right():
    """4×4: the true foreground is the top row (4 pixels); the prediction holds 2 of them and 2 others (IoU 2/6)."""
    true = torch.zeros(1, 1, 4, 4)
    true[0, 0, 0, :] = 1
    pred = torch.zeros(1, 1, 4, 4)
    pred[0, 0, 0, :2] = 1
    pred[0, 0, 1, :2] = 1
    return true, pred


def test_soft_dice_by_hand():
    true, pred = _half_right()
    logits = torch.where(pred > 0, 50.0, -50.0)
    assert soft_dice_loss(logits, true, eps=0).item() == pytest.approx(1 - 2 * 2 / (4 + 4))
    assert soft_dice_loss(torch.where(true > 0, 50.0, -50.0), true).item() == pytest.approx(0.0, abs=1e-6)
    # an empty mask predicted empty costs nothing; the loss's part and total follow its weight
    assert soft_dice_loss(torch.full((1, 1, 4, 4), -50.0), torch.zeros(1, 1, 4, 4)).item() == pytest.approx(0.0, abs=1e-6)
    depth = torch.rand(1, 1, 12, 12)
    total, parts = MaskDepthLoss(w_mask=0.0, w_depth=0.0, w_dice=2.0)(logits, depth, true, depth)
    assert parts["loss_mask_dice"].item() == pytest.approx(soft_dice_loss(logits, true).item())
    assert total.item() == pytest.approx(2 * parts["loss_mask_dice"].item())


def test_lovasz_hinge_by_hand():
    # certain predictions with margin m: right pixels cost nothing, wrong ones 1 + m each, and the Lovász
    # extension weighs them so that the loss is (1 + m)·(1 − IoU)
    true, pred = _half_right()
    for margin in (1.0, 3.0):
        assert lovasz_hinge_loss(torch.where(pred > 0, margin, -margin), true).item() == pytest.approx((1 + margin) * (1 - 2 / 6))
    assert lovasz_hinge_loss(torch.where(true > 0, 3.0, -3.0), true).item() == 0.0
    # logits all 0: every error is 1, and the loss is 1 − IoU of predicting nothing = 1; an empty truth costs its largest error
    assert lovasz_hinge_loss(torch.zeros(1, 1, 4, 4), true).item() == pytest.approx(1.0)
    one_wrong = torch.full((1, 1, 4, 4), -2.0)
    one_wrong[0, 0, 0, 0] = 0.5  # its error 1.5, the others' −1
    assert lovasz_hinge_loss(one_wrong, torch.zeros(1, 1, 4, 4)).item() == pytest.approx(1.5)
    # per image, averaged over the batch; the loss's part and total follow its weight
    logits = torch.randn(2, 1, 4, 4)
    both = lovasz_hinge_loss(logits, true.expand(2, -1, -1, -1))
    assert both.item() == pytest.approx((lovasz_hinge_loss(logits[:1], true) + lovasz_hinge_loss(logits[1:], true)).item() / 2)
    depth = torch.rand(2, 1, 12, 12)
    total, parts = MaskDepthLoss(w_mask=0.0, w_depth=0.0, w_lovasz=0.5)(logits, depth, true.expand(2, -1, -1, -1), depth)
    assert parts["loss_mask_lovasz"].item() == pytest.approx(both.item())
    assert set(parts) <= set(PARTS)  # training sums every part the loss returns
    assert total.item() == pytest.approx(0.5 * both.item())


def test_threshold_rule_on_a_known_pair():
    # bg grey; fg_bg differs by 0.2 in one channel at 3 pixels and by 0.05 (below 0.1) at a fourth
    bg = torch.full((1, 3, 4, 4), 0.5)
    fg_bg = bg.clone()
    fg_bg[0, 1, 0, :3] = 0.7  # largest channel difference 0.2: foreground
    fg_bg[0, :, 3, 3] = 0.55  # 0.05 everywhere: background
    pred = threshold_mask(fg_bg, bg)
    assert pred.shape == (1, 1, 4, 4) and pred.sum() == 3 and pred[0, 0, 0, :3].all()
    # on decoded uint8 arrays (N×H×W×C), against a true mask of 4 pixels (the top row): IoU 3/4
    as_uint8 = lambda x: (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # noqa: E731
    mask = torch.zeros(1, 4, 4, 1, dtype=torch.uint8)
    mask[0, 0, :, 0] = 255
    assert threshold_iou(as_uint8(fg_bg), as_uint8(bg), mask) == pytest.approx(3 / 4)
