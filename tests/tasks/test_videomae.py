import csv
import math

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import tiny_config
from torch.nn import functional as F

from vssl.backbones import build
from vssl.backbones.vit import VideoViT, sinusoid_position_embedding
from vssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vssl.tasks import VideoMAE
from vssl.tasks.videomae import masked_count, patchify, reconstruction_target, tube_mask

# A CPU-sized VideoMAE: 32-d ViT with one block, 2x8x8 tubelets, a 32-d one-block decoder.
TINY = {
    "backbone": "vit_tiny_8",
    "backbone_kwargs": {"dim": 32, "depth": 1, "heads": 2},
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "mask_ratio": 0.75,
    "reference_batch_size": None,
}


def _uint8_clips(b: int = 2, t: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, size, size), generator=g, dtype=torch.uint8)


def _first_block_inputs(model: VideoViT) -> list[torch.Size]:
    shapes: list[torch.Size] = []
    model.trunk.blocks[0].register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape))
    return shapes


# ---------------------------------------------------------------- backbone
@pytest.mark.parametrize(("t", "h", "w"), [(4, 16, 16), (8, 32, 24), (16, 40, 32)])
def test_vit_shapes_and_tubelet_count(t, h, w):
    model = build("vit_tiny_8", dim=32, depth=1, heads=2)
    x = torch.randn(2, 3, t, h, w)
    assert model.tubelet == (2, 8, 8) and model.grid(x.shape) == (t // 2, h // 8, w // 8)
    assert model.embed(x).shape == (2, (t // 2) * (h // 8) * (w // 8), 32)
    assert model.forward_features(x).shape == (2, 32, t // 2, h // 8, w // 8)
    assert model(x).shape == (2, 32)


def test_paper_sizes_and_configurable_tubelets():
    with torch.device("meta"):
        vit_b, vit_s = build("vit_b_16"), build("vit_s_16")
        small_tubes = build("vit_tiny_8", patch_size=4, tubelet_frames=1)
    clip = torch.empty(1, 3, 16, 224, 224, device="meta")
    assert vit_b.embed(clip).shape == (1, 8 * 14 * 14, 768)  # 1568 tubelets of 2x16x16
    assert (vit_b.out_dim, len(vit_b.trunk.blocks), vit_b.trunk.blocks[0].attn.heads) == (
        768,
        12,
        12,
    )
    assert (vit_s.out_dim, len(vit_s.trunk.blocks), vit_s.trunk.blocks[0].attn.heads) == (
        384,
        12,
        6,
    )
    assert vit_b.trunk.patch_embed.kernel_size == vit_b.trunk.patch_embed.stride == (2, 16, 16)
    assert small_tubes.tubelet == (1, 4, 4)
    assert small_tubes.grid((1, 3, 8, 32, 16)) == (8, 8, 4)


def test_vit_rejects_sizes_its_tubelets_do_not_divide():
    model = build("vit_tiny_8", dim=32, depth=1, heads=2)
    with pytest.raises(
        ValueError, match=r"\(5, 32, 32\) must be multiples of the tubelet \(2, 8, 8\)"
    ):
        model(torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match="must be multiples"):
        model(torch.zeros(1, 3, 4, 30, 32))
    with pytest.raises(ValueError, match="divisible by heads"):
        build("vit_tiny_8", dim=30, heads=4)


def test_position_embedding_is_the_official_sinusoid_table_added_to_every_token():
    table = sinusoid_position_embedding(7, 6)
    for p in range(7):
        for j in range(6):
            angle = p / 10000 ** (2 * (j // 2) / 6)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[p, j].item() == pytest.approx(expected, abs=1e-6)
    model = build("vit_tiny_8", dim=32, depth=1, heads=2)
    x = torch.randn(1, 3, 4, 16, 24)
    raw = model.trunk.patch_embed(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.embed(x) - raw, sinusoid_position_embedding(12, 32)[None])


def test_pooled_feature_is_the_layer_norm_of_the_token_mean():
    torch.manual_seed(0)
    model = build("vit_tiny_8", dim=32, depth=1, heads=2)
    with torch.no_grad():
        model.fc_norm.weight.uniform_(0.5, 2.0)
        model.fc_norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 3, 4, 16, 16)
    tokens = model.encode(model.embed(x))
    mean = tokens.mean(dim=1)
    expected = (mean - mean.mean(-1, keepdim=True)) / torch.sqrt(
        mean.var(-1, unbiased=False, keepdim=True) + 1e-6
    )
    expected = expected * model.fc_norm.weight + model.fc_norm.bias
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- masking
@pytest.mark.parametrize(
    ("grid", "ratio", "masked"),
    [
        ((4, 4, 5), 0.75, 15),
        ((2, 14, 14), 0.9, 176),
        ((3, 10, 10), 0.29, 29),
        ((8, 14, 14), 0.75, 147),
    ],
)
def test_tube_mask_is_the_same_at_every_time_step_with_an_exact_ratio(grid, ratio, masked):
    t, h, w = grid
    mask = tube_mask(6, grid, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (6, t * h * w) and mask.dtype == torch.bool
    per_step = mask.view(6, t, h * w)
    assert (per_step == per_step[:, :1]).all()  # one spatial mask repeated over time
    assert (per_step.sum(dim=2) == masked).all()
    assert masked_count(h * w, ratio) == masked


def test_masks_differ_between_samples_and_reproduce_with_the_same_seed():
    def draw(seed: int) -> torch.Tensor:
        return tube_mask(8, (2, 4, 4), 0.75, torch.Generator().manual_seed(seed))

    first = draw(0)
    assert torch.equal(first, draw(0))
    assert not torch.equal(first, draw(1))
    assert len({tuple(row.tolist()) for row in first}) > 1
    # The task's generator is seeded from torch's seed (seed_everything), so runs repeat.
    video = torch.zeros(8, 3, 4, 32, 32)
    masks = []
    for _ in range(2):
        torch.manual_seed(3)
        task = VideoMAE(**TINY)
        masks.append(torch.stack([task.draw_mask(video) for _ in range(2)]))
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0][0], masks[0][1])  # successive batches get new masks


def test_bad_mask_ratio_and_sizes_are_clear_errors():
    for ratio in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
            VideoMAE(**{**TINY, "mask_ratio": ratio})
    with pytest.raises(ValueError, match="masks all 10 tokens"):
        masked_count(10, 0.9999999)
    with pytest.raises(ValueError, match="decoder_dim, decoder_depth and decoder_heads"):
        VideoMAE(**{**TINY, "decoder_depth": 0})


def test_a_backbone_that_is_not_a_vit_is_refused():
    with pytest.raises(ValueError, match=r"VideoMAE needs a video ViT .* got backbone 'tiny3d'"):
        VideoMAE(backbone="tiny3d", backbone_kwargs={"width": 4})


# ---------------------------------------------------------------- encoder, target, loss
def test_encoder_sees_only_the_visible_tokens():
    torch.manual_seed(0)
    task = VideoMAE(**TINY)
    batch = task.augment_batch({"video": _uint8_clips(t=4, size=32)})
    shapes = _first_block_inputs(task.backbone)
    inputs: list[torch.Tensor] = []
    task.backbone.trunk.blocks[0].register_forward_pre_hook(lambda _m, a: inputs.append(a[0]))
    task._mask_generator = torch.Generator().manual_seed(7)
    task.step(batch, "train")
    mask = tube_mask(2, (2, 4, 4), 0.75, torch.Generator().manual_seed(7))
    assert shapes == [torch.Size([2, 2 * 4, 32])]  # 2 time steps x (16 - 12) visible positions
    tokens = task.backbone.embed(batch["video"])
    torch.testing.assert_close(inputs[0], tokens[~mask].reshape(2, 8, 32))
    prediction = task.decode(task.encode_visible(batch["video"], mask), mask)
    assert prediction.shape == (2, 2 * 12, 3 * 2 * 8 * 8)  # one prediction per masked tubelet


def test_evaluation_runs_the_full_unmasked_encoder():
    torch.manual_seed(0)
    task = VideoMAE(**TINY).eval()
    shapes = _first_block_inputs(task.backbone)
    clips = _uint8_clips(t=4, size=32)
    features = task.extract_features(clips)
    assert shapes == [torch.Size([2, 2 * 16, 32])]
    torch.testing.assert_close(features, task.backbone(task._normalise(clips)))


def test_target_of_every_tubelet_has_zero_mean_and_unit_variance():
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    video = torch.randn(2, 3, 4, 16, 24) * 2 + 0.5
    target = reconstruction_target(video, (2, 8, 8), mean, std)
    assert target.shape == (2, 2 * 2 * 3, 2 * 8 * 8 * 3)
    per_channel = target.view(2, 12, 128, 3)
    torch.testing.assert_close(per_channel.mean(dim=2), torch.zeros(2, 12, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        per_channel.var(dim=2, unbiased=True), torch.ones(2, 12, 3), atol=1e-4, rtol=0
    )


def test_target_hand_computation_on_a_constructed_clip():
    # One 1x2x2 tubelet per channel: channel c holds pixels (c+1) * [0, 1, 2, 3] after
    # un-normalising with mean 0.5 and std 2.
    pixels = torch.arange(4.0).view(1, 1, 1, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).view(
        1, 3, 1, 1, 1
    )
    mean, std = torch.full((3,), 0.5), torch.full((3,), 2.0)
    video = (pixels - 0.5) / 2.0
    raw = reconstruction_target(video, (1, 2, 2), mean, std, normalize=False)
    # layout (t, h, w, channel): pixel-major, channel-minor
    assert raw.view(4, 3).tolist() == [[0, 0, 0], [1, 2, 3], [2, 4, 6], [3, 6, 9]]
    target = reconstruction_target(video, (1, 2, 2), mean, std).view(4, 3)
    unbiased_std = math.sqrt(((np.arange(4) - 1.5) ** 2).sum() / 3)  # sqrt(5/3)
    expected = (torch.arange(4.0) - 1.5) / (unbiased_std + 1e-6)
    for c in range(3):
        torch.testing.assert_close(target[:, c], expected)


def test_patchify_orders_tubelets_as_the_encoder_tokens():
    video = torch.arange(2 * 3 * 4 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 4, 6)
    patches = patchify(video, (2, 2, 3))  # grid 2 x 2 x 2
    assert patches.shape == (2, 8, 12, 3)
    b, n = 1, 5  # token 5 = (t'=1, h'=0, w'=1)
    expected = video[b, :, 2:4, 0:2, 3:6].permute(1, 2, 3, 0).reshape(12, 3)
    assert torch.equal(patches[b, n], expected)


def _hand_target(video: torch.Tensor, mask: torch.Tensor, tubelet=(2, 8, 8)) -> torch.Tensor:
    """The target of the masked tubelets, tubelet by tubelet in numpy."""
    pt, ph, pw = tubelet
    pixels = video.double().numpy() * np.array(IMAGENET_STD).reshape(3, 1, 1, 1) + np.array(
        IMAGENET_MEAN
    ).reshape(3, 1, 1, 1)
    _, _, t, h, w = video.shape
    gh, gw = h // ph, w // pw
    rows = []
    for b in range(video.shape[0]):
        for n in np.flatnonzero(mask[b].numpy()):
            ti, rest = divmod(int(n), gh * gw)
            hi, wi = divmod(rest, gw)
            cube = pixels[
                b, :, ti * pt : (ti + 1) * pt, hi * ph : (hi + 1) * ph, wi * pw : (wi + 1) * pw
            ]
            cube = cube.reshape(3, -1)
            cube = (cube - cube.mean(1, keepdims=True)) / (
                cube.std(1, ddof=1, keepdims=True) + 1e-6
            )
            rows.append(cube.T.reshape(-1))  # (t, h, w, channel)
    return torch.tensor(np.stack(rows)).view(video.shape[0], -1, 3 * pt * ph * pw)


def test_loss_is_the_mse_on_the_masked_tubelets_only():
    torch.manual_seed(0)
    task = VideoMAE(**TINY)
    video = task.augment_batch({"video": _uint8_clips(t=4, size=32)})["video"]
    task._mask_generator = torch.Generator().manual_seed(11)
    loss = task.step({"video": video}, "train").loss
    mask = tube_mask(2, (2, 4, 4), 0.75, torch.Generator().manual_seed(11))
    with torch.no_grad():
        prediction = task.decode(task.encode_visible(video, mask), mask).double()
    target = _hand_target(video, mask)
    assert target.shape == prediction.shape == (2, 24, 384)
    expected = ((prediction - target) ** 2).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_zero_prediction_costs_the_targets_mean_square():
    # With the head zeroed the prediction is 0, and the standardised target of a tubelet of
    # n = 2 * 8 * 8 pixels has a mean square of (n - 1) / n per channel.
    torch.manual_seed(0)
    task = VideoMAE(**TINY)
    with torch.no_grad():
        task.head.weight.zero_()
        task.head.bias.zero_()
    video = task.augment_batch({"video": _uint8_clips(t=4, size=32)})["video"]
    loss = task.step({"video": video}, "train").loss
    assert loss.item() == pytest.approx(127 / 128, abs=1e-5)


def test_step_gradients_and_probe_features():
    torch.manual_seed(0)
    task = VideoMAE(**TINY, num_classes=4)
    video = task.augment_batch({"video": _uint8_clips(t=4, size=32)})["video"]
    task._mask_generator = torch.Generator().manual_seed(2)
    out = task.step({"video": video}, "train")
    out.loss.backward()
    frozen = {n for n, p in task.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.fc_norm.weight", "backbone.fc_norm.bias"}
    missing = [
        n
        for n, p in task.named_parameters()
        if p.requires_grad and p.grad is None and not n.startswith("probe.")
    ]
    assert missing == []
    mask = tube_mask(2, (2, 4, 4), 0.75, torch.Generator().manual_seed(2))
    with torch.no_grad():
        visible = task.encode_visible(video, mask)
    torch.testing.assert_close(out.features, F.layer_norm(visible.mean(dim=1), (32,), eps=1e-6))
    assert not out.features.requires_grad


# ---------------------------------------------------------------- optimisation and defaults
def test_optimizer_groups_and_betas():
    task = VideoMAE(**TINY, num_classes=4, lr=1e-3, probe_lr=0.05)
    decay, no_decay, probe = task.parameter_groups()
    names = {id(p): n for n, p in task.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"], probe["weight_decay"]) == (
        0.05,
        0.0,
        0.0,
    )
    assert decay["lr"] == no_decay["lr"] == 1e-3 and probe["lr"] == 0.05
    assert "mask_token" in no_decay_names
    assert {
        "backbone.trunk.blocks.0.norm1.weight",
        "encoder_norm.bias",
        "head.bias",
        "backbone.trunk.patch_embed.bias",
    } <= no_decay_names
    assert all(task.get_parameter(n).ndim >= 2 for n in decay_names)
    assert {
        "backbone.trunk.patch_embed.weight",
        "encoder_to_decoder.weight",
        "head.weight",
        "decoder.0.attn.qkv.weight",
    } <= decay_names
    trained = {
        n for n, p in task.named_parameters() if p.requires_grad and not n.startswith("probe.")
    }
    assert decay_names | no_decay_names == trained and not decay_names & no_decay_names
    assert "backbone.fc_norm.weight" not in trained
    optimizer = torch.optim.AdamW(task.parameter_groups())
    assert all(g["betas"] == (0.9, 0.95) for g in optimizer.param_groups)
    sgd = VideoMAE(**TINY, optimizer="sgd")
    assert all("betas" not in g for g in sgd.parameter_groups())


def test_paper_defaults():
    with torch.device("meta"):
        task = VideoMAE()
    hp = task.hparams
    assert task.backbone.tubelet == (2, 16, 16) and task.backbone.out_dim == 768
    assert task.mask_ratio == 0.9 and tuple(hp.betas) == (0.9, 0.95)
    assert (hp.optimizer, hp.lr, hp.reference_batch_size, hp.weight_decay) == (
        "adamw",
        1.5e-4,
        256,
        0.05,
    )
    assert (hp.lr_schedule, hp.warmup_epochs, hp.min_lr_ratio) == ("cosine", 40.0, 1 / 15)
    assert task.encoder_to_decoder.in_features == 768 and task.encoder_to_decoder.bias is None
    assert task.encoder_to_decoder.out_features == 384 and len(task.decoder) == 4
    assert task.decoder[0].attn.heads == 6
    assert task.head.out_features == 3 * 2 * 16 * 16
    assert not task.augment.photometric  # normalisation only


def test_encoder_to_decoder_keeps_the_default_linear_init_and_the_decoder_is_xavier():
    # The official encoder_to_decoder is outside the modules its Xavier _init_weights is applied
    # to: PyTorch's default, uniform in +-1/sqrt(fan_in), less than half of Xavier's range here.
    torch.manual_seed(0)
    task = VideoMAE(**{**TINY, "backbone_kwargs": {"dim": 256, "depth": 1, "heads": 2}})
    w = task.encoder_to_decoder.weight
    bound = 1 / math.sqrt(256)
    assert w.shape == (32, 256) and w.abs().max() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.03 * bound / math.sqrt(3)
    xavier = math.sqrt(6 / (256 + 32))
    assert xavier > 2 * bound
    head = task.head.weight  # decoder Linear layers stay Xavier-uniform with zero biases
    fan = sum(head.shape)
    assert abs(head.std().item() - math.sqrt(2 / fan)) < 0.05 * math.sqrt(2 / fan)
    assert torch.all(task.head.bias == 0)


# ---------------------------------------------------------------- command line
def test_cli_training_lowers_the_loss(tiny_synthetic, tmp_path, run_cli):
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=6)
    cfg["model"] = {
        "class_path": "vssl.tasks.VideoMAE",
        "init_args": {**TINY, "lr": 0.003, "warmup_epochs": 0},
    }
    cfg["data"]["init_args"].update(
        clip_len=8, stride=2, crop_size=32, decode_size=32, batch_size=4
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", "run.yaml", "--trainer.logger.init_args.name", "m"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "runs" / "m" / "version_0" / "metrics.csv").open()))
    train = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(train) == len(val) == 6 and all(np.isfinite(train + val))
    assert train[-1] < train[0] - 0.05
    assert val[-1] < val[0] - 0.02
    assert "val/probe_acc" in rows[0]


# ---------------------------------------------------------------- learning
def test_a_tubelet_copied_from_the_visible_one_is_learnt_far_below_the_mean():
    # Every tubelet of a clip is the same mixture of 3 fixed 2x8x8 patterns, with random weights
    # per clip so that no fixed prediction fits: a masked tubelet is an exact copy of the visible
    # one. A task whose mask, target and prediction line up and whose gradients reach every part
    # gets far below the 127/128 of predicting the mean (the plateau of the synthetic CPU runs)
    # in 120 steps; with the encoder's output kept from the decoder it stays at 0.98.
    torch.manual_seed(0)
    task = VideoMAE(**TINY, online_probe=False)
    g = torch.Generator().manual_seed(1)
    patterns = torch.rand(3, 2, 3, 8, 8, generator=g) - 0.5

    def clips(b: int) -> torch.Tensor:
        weights = torch.randn(b, 3, 1, 1, 1, 1, generator=g)
        tubelet = 128 + 60 * (weights * patterns).sum(1)  # (b, 2, 3, 8, 8): one time step
        return tubelet.repeat(1, 1, 1, 2, 2).round().clamp(0, 255).to(torch.uint8)  # 2 x 2

    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(120):
        loss = task.step(task.augment_batch({"video": clips(16)}), "train").loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.9
    assert np.mean(losses[-10:]) < 0.15
