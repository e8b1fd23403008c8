"""Segmentation over stitches (spec §14, esta.vit.seg): the SETR-naive head by hand, the trainable set
under PST and full fine-tuning, merged == unmerged, export == served stitch, FLOPs with the head, the
position embedding at a larger input, and mIoU / pixel accuracy against torchmetrics and by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from esta.sampling import SamplerConfig, StitchSampler
from esta.train import TrainConfig, train
from esta.vit.anchors import build_anchor, family
from esta.vit.build import tuning_config
from esta.vit.export import export_stitch, load_stitch
from esta.vit.seg import IGNORE, SegHead, assemble_seg, build_seg_family, confusion, evaluate_seg, seg_scores
from esta.vit.stitch import StitchedViT, stitch_costs
from esta.vit.tuning import TuningConfig, make_tunable

K, HIDDEN, PX = 5, 16, 32  # the embedded family at its native 32 px: a 4 x 4 token grid
ESTA = dict(lora=dict(rank=2, alpha=None, dropout=0.0, targets="attn"), stitch_biases=True,
            peft=dict(method="lora", adapter=dict(bottleneck=4), adaptformer=dict(bottleneck=4, scale=0.1)))


def model(method: str = "esta", px: int = PX, weights=None):
    torch.manual_seed(0)
    return assemble_seg("embedded", K, px, HIDDEN, weights, tuning_cfg=tuning_config(method, ESTA))


def images(n: int = 3, px: int = PX, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, px, px, generator=torch.Generator().manual_seed(seed))


def masks(n: int = 3, px: int = PX, seed: int = 2) -> torch.Tensor:
    y = torch.randint(0, K, (n, px, px), generator=torch.Generator().manual_seed(seed))
    y[:, :3] = IGNORE
    return y


def perturb(m, seed: int = 3):
    """Non-zero LoRA B and stitch biases away from their init: a trained model's state."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n or n.startswith("biases."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_anchor_stitch_is_the_anchor_backbone_plus_a_setr_head_by_hand():
    m = model()
    vit = copy.deepcopy(m.net.anchors[1])  # before any LoRA: a fresh LoRA changes nothing
    x = images()
    tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]  # (B, 16, C): blocks + final norm
    grid = tokens.transpose(1, 2).reshape(3, -1, 4, 4)  # (B, C, 4, 4)
    head = vit.head
    z = F.conv2d(grid, head.conv1.weight[:, :, None, None], head.conv1.bias)  # a 1x1 conv
    z = F.relu(F.layer_norm(z.permute(0, 2, 3, 1), (HIDDEN,)).permute(0, 3, 1, 2))
    z = F.conv2d(z, head.conv2.weight[:, :, None, None], head.conv2.bias)
    expected = F.interpolate(z, size=(PX, PX), mode="bilinear", align_corners=False)
    with torch.no_grad():
        got = m(x, 1)
    assert got.shape == (3, K, PX, PX)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sid", [0, 2, 5, 20, 34])
def test_pst_trains_the_path_lora_the_stitch_biases_and_the_end_head(sid):
    m = model()
    s = m.net.stitch(sid)
    m.loss((images(), masks()), sid).backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None}
    lora = {n for n, _ in m.named_parameters() if "lora_" in n and m.net.on_path(n.removeprefix("net."), sid)}
    head = {f"net.anchors.{s.end}.head.conv1.weight", f"net.anchors.{s.end}.head.conv2.weight"}
    own = {n for n, _ in m.named_parameters() if n.startswith(f"biases.{sid}.")}
    assert {f"biases.{sid}.anchors:{s.end}:head:conv1:bias", f"biases.{sid}.anchors:{s.end}:head:conv2:bias"} <= own
    assert lora and got == lora | own | head
    # Θ_s of importance: the stitch's biases and LoRA, not the shared head weights
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in m.importance_params(sid)} == lora | own


def test_full_fine_tuning_trains_every_parameter_on_the_path():
    m = model("snnet")
    sid = 20
    m.loss((images(), masks()), sid).backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None}
    on_path = {n for n, _ in m.named_parameters() if m.net.on_path(n.removeprefix("net."), sid)}
    assert got == on_path and any(".head.conv2." in n for n in got)


def test_ignored_pixels_do_not_change_the_loss():
    m = model()
    x, y = images(), masks()
    with torch.no_grad():
        loss = m.loss((x, y), 3)
        logits = m(x, 3)
    kept = y != IGNORE
    by_hand = -logits.log_softmax(1).gather(1, y.clamp(min=0)[:, None])[:, 0][kept].mean()
    torch.testing.assert_close(loss, by_hand)


def test_merged_equals_unmerged_and_export_equals_the_served_stitch(tmp_path):
    m = model()
    perturb(m)
    x = images()
    with torch.no_grad():
        before = {sid: m(x, sid) for sid in range(m.net.num_stitches)}
    arch = [dict(name=s.name, timm_name=s.timm_name, kwargs=s.kwargs) for s in family("embedded")]
    paths = {sid: export_stitch(m, sid, tmp_path, arch) for sid in (0, 2, 7, 34)}
    m.for_inference()
    with torch.no_grad():
        for sid in range(m.net.num_stitches):
            torch.testing.assert_close(m(x, sid), before[sid], atol=1e-5, rtol=0)
        for sid, path in paths.items():
            torch.testing.assert_close(load_stitch(path)(x), m(x, sid), atol=1e-5, rtol=0)


def test_flops_count_the_head_at_the_segmentation_resolution():
    table = stitch_costs(build_seg_family("embedded", K, 64, HIDDEN))
    widths = [48, 96, 192]
    tokens = (64 // 8) ** 2  # the head runs on the patch tokens only
    for s in table.itertuples():
        assert s.macs - s.macs_nohead == tokens * (widths[s.end] * HIDDEN + HIDDEN * K)
    at32 = stitch_costs(build_seg_family("embedded", K, 32, HIDDEN))
    assert (table.macs_nohead / at32.macs_nohead).between(65 / 17, 5).all()  # 65 vs 17 tokens; attention grows faster


def test_larger_inputs_interpolate_the_pretrained_position_embedding(tmp_path):
    spec = family("embedded")[0]
    torch.manual_seed(5)
    small = build_anchor(spec, 100)
    path = tmp_path / "ti.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    m = assemble_seg("embedded", K, 64, HIDDEN, [path, None, None])
    got = m.net.anchors[0].pos_embed
    expected = resample_abs_pos_embed(small.pos_embed, (8, 8), num_prefix_tokens=1)
    assert got.shape == (1, 65, 48)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(m.net.anchors[0].blocks[2].mlp.fc1.weight, small.blocks[2].mlp.fc1.weight)
    assert m(images(2, 64), 0).shape == (2, K, 64, 64)


def test_the_head_refuses_a_grid_that_is_not_square():
    with pytest.raises(ValueError, match="square"):
        SegHead(8, 3, 4, 8, 1)(torch.randn(1, 1 + 6, 8))


def test_scores_match_torchmetrics_and_a_hand_computation():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

    # by hand: 2 classes (and one absent class), labels [0 0 1 1 ign], predictions [0 1 1 1 0]
    labels = torch.tensor([[0, 0, 1, 1, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    logits = F.one_hot(pred, 3).permute(0, 2, 1).float()  # (1, 3, 5)
    s = seg_scores(confusion(logits, labels, 3))
    assert s["iou"][0] == pytest.approx(1 / 2) and s["iou"][1] == pytest.approx(2 / 3)
    assert s["iou"][2] != s["iou"][2]  # class 2 is neither labelled nor predicted: NaN, not in the mean
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2) and s["pixel_acc"] == pytest.approx(3 / 4)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, K, 9, 9, generator=g)
    y = torch.randint(0, K, (4, 9, 9), generator=g)
    y[:, 0] = IGNORE
    s = seg_scores(confusion(logits, y, K))
    tm = multiclass_jaccard_index(logits.argmax(1), y, K, average="none", ignore_index=IGNORE)
    torch.testing.assert_close(torch.tensor(s["iou"], dtype=torch.float32), tm)
    acc = multiclass_accuracy(logits.argmax(1), y, K, average="micro", ignore_index=IGNORE)
    assert s["pixel_acc"] == pytest.approx(float(acc), abs=1e-6)


def test_one_training_loop_fits_a_segmentation_task():
    """esta.train.train, unchanged, on (image, mask) batches: an anchor fine-tuned alone (a one-stitch
    net, SN-Net's adapt stage) learns masks that are a function of each patch's colour."""
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(16, 3, PX // 8, PX // 8, generator=g), scale_factor=8, mode="nearest")
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long() * 2  # (B, H, W), 4 classes
    data = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    m = make_tunable(StitchedViT(build_seg_family("embedded", K, PX, HIDDEN)[:1]), TuningConfig(mode="full"))
    assert m.net.num_stitches == 1
    before = evaluate_seg(m, data)[0]
    cfg = TrainConfig(epochs=60, batch_size=16, lr=3e-3, warmup_epochs=1, seed=0)
    sampler = StitchSampler(1, cfg.total_steps(len(data)), SamplerConfig(kind="uniform"), seed=0)
    result = train(m, data, cfg, sampler, progress=False)
    after = evaluate_seg(m, data)[0]
    assert result.history[-1]["loss"] < 0.6 * result.history[0]["loss"]
    assert after["miou"] > before["miou"] + 0.3 and after["pixel_acc"] > 0.8


def test_dense_task_ids_dispatch_to_seg_and_nothing_else():
    from esta.vit.tasks import dense_name, task_kind

    assert task_kind("dense/shapes") == "seg" and dense_name("dense/ade20k") == "ade20k"
    assert {task_kind(t) for t in ("embedded/digits", "vtab/dtd", "cifar100", "custom/dense")} == {"cls"}
    with pytest.raises(ValueError, match="vtab/dtd"):
        dense_name("vtab/dtd")


def test_split_tables_rebuild_the_every_stitch_table():
    """evaluate_stitches writes one table per split; the deployment, the tables and the palette read both
    back as one row per stitch: costs, selection mIoU, test mIoU and pixel accuracy, test IoU per class."""
    import pandas as pd

    from esta.vit.seg_results import split_table, stitch_table

    costs = pd.DataFrame(dict(stitch_id=[0, 1], gmacs=[1.0, 2.0], macs_nohead=[0.9, 1.9]))
    sel = {0: dict(miou=0.1, pixel_acc=0.5, iou=[0.1, 0.2]), 1: dict(miou=0.3, pixel_acc=0.6, iou=[0.3, 0.4])}
    test = {0: dict(miou=0.2, pixel_acc=0.7, iou=[0.5, 0.6]), 1: dict(miou=0.4, pixel_acc=0.8, iou=[0.7, 0.8])}
    s, t = split_table(costs, sel, "selection", ["a", "b"]), split_table(costs, test, "test", ["a", "b"])
    assert "iou_a" not in s and t["iou_b"].tolist() == [0.6, 0.8]
    table = stitch_table(s, t)
    assert list(table.columns) == ["stitch_id", "gmacs", "macs_nohead", "selection_miou", "test_miou",
                                   "test_pixel_acc", "iou_a", "iou_b"]
    assert table["selection_miou"].tolist() == [0.1, 0.3] and table["test_miou"].tolist() == [0.2, 0.4]
    with pytest.raises(ValueError, match="different stitches"):
        stitch_table(s.iloc[::-1], t)
