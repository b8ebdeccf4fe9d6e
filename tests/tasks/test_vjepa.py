"""V-JEPA: multi-block masks, the predictor, the L1 loss, the EMA target and a training run."""

import csv
import math

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import tiny_config

from vssl.tasks import VJEPA
from vssl.tasks.vjepa import (
    PAPER_MASKS,
    BlockMaskSpec,
    block_size,
    jepa_loss,
    mask_indices,
    multiblock_mask,
    sample_blocks,
    sincos_3d_position_embedding,
)

# A CPU-sized V-JEPA: 32-d ViT with one block, 2x8x8 tubelets, a 16-d one-block predictor.
TINY = {
    "backbone": "vit_tiny_8",
    "backbone_kwargs": {"dim": 32, "depth": 1, "heads": 2},
    "predictor_dim": 16,
    "predictor_depth": 1,
}
GRID = (8, 14, 14)  # 16 x 224 x 224 clips on 2 x 16 x 16 tubelets


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clips(b: int = 2, t: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, t, size, size, generator=_gen(seed))


def _formula(n: int, ar: float, side: int = 14) -> tuple[int, int]:
    return min(side, round(math.sqrt(n * ar))), min(side, round(math.sqrt(n / ar)))


# ---------------------------------------------------------------- masking
@pytest.mark.parametrize(
    ("spatial", "aspect", "temporal", "expected"),
    [
        (0.15, 1.5, 1.0, (8, 7, 4)),  # n = int(196 * 0.15) = 29: round(6.60), round(4.40)
        (0.15, 0.75, 1.0, (8, 5, 6)),  # round(4.66), round(6.22)
        (0.7, 0.75, 1.0, (8, 10, 14)),  # n = 137: round(10.14), round(13.52)
        (0.7, 1.5, 1.0, (8, 14, 10)),  # round(14.34) clipped to 14, round(9.56)
        (0.7, 1.5, 0.5, (4, 14, 10)),  # half the time steps
    ],
)
def test_block_size_by_hand(spatial, aspect, temporal, expected):
    spec = BlockMaskSpec(1, (spatial, spatial), (aspect, aspect), (temporal, temporal))
    assert block_size(spec, GRID, _gen(0)) == expected


@pytest.mark.parametrize("spec", PAPER_MASKS, ids=["short_range", "long_range"])
def test_block_sizes_cover_the_paper_scale_and_aspect_range(spec):
    n = int(196 * spec.spatial_scale[0])
    allowed = {_formula(n, ar) for ar in np.linspace(0.75, 1.5, 2001)}
    g = _gen(0)
    drawn = {block_size(spec, GRID, g) for _ in range(400)}
    assert {t for t, _, _ in drawn} == {8}  # every block spans all time steps
    sizes = {(h, w) for _, h, w in drawn}
    assert sizes <= allowed
    assert {_formula(n, 0.75), _formula(n, 1.5)} <= sizes  # both ends of the range occur


@pytest.mark.parametrize("spec", PAPER_MASKS, ids=["short_range", "long_range"])
def test_blocks_per_sample_one_size_per_batch_and_the_same_mask_over_time(spec):
    corners, size = sample_blocks(16, GRID, spec, _gen(1))
    assert corners.shape == (16, spec.num_blocks, 3)  # num_blocks blocks in every sample
    assert size[0] == 8 and (corners[..., 0] == 0).all()  # every block spans all time steps
    assert len({tuple(c) for c in corners.view(-1, 3)[:, 1:].tolist()}) > spec.num_blocks
    mask = multiblock_mask(16, GRID, spec, _gen(1))
    assert mask.shape == (16, 8 * 196) and mask.dtype == torch.bool
    _, h, w = size
    for row, sample in zip(mask, corners.tolist(), strict=True):
        painted = torch.zeros(GRID, dtype=torch.bool)
        for start, top, left in sample:
            painted[start:, top : top + h, left : left + w] = True
        assert torch.equal(row, painted.flatten())
    per_step = mask.view(16, 8, 196)
    assert (per_step == per_step[:, :1]).all()
    assert not mask.all(dim=1).any()  # every sample keeps a context


def test_fraction_masked():
    # One 2 x 2 block (n = int(16 * 0.25) = 4 at aspect 1) on a 4 x 4 grid masks exactly 1/4.
    one = BlockMaskSpec(1, (0.25, 0.25), (1.0, 1.0))
    assert (multiblock_mask(50, (2, 4, 4), one, _gen(0)).float().mean(dim=1) == 0.25).all()
    # The paper's sets on 8 x 14 x 14 tokens: a union of 8 blocks of 29-30 tokens, at least one
    # block and at most 8; of 2 blocks of 140 tokens (about 71% of a frame) and never all.
    short, long = (multiblock_mask(300, GRID, s, _gen(2)).float().mean(dim=1) for s in PAPER_MASKS)
    assert short.min() >= 28 / 196 and short.max() <= 8 * 30 / 196
    assert 0.58 < short.mean() < 0.70
    assert long.min() >= 140 / 196 - 1e-6 and long.max() < 1.0
    assert 0.80 < long.mean() < 0.88


def test_mask_indices_are_cut_to_the_shortest_row():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 2, 5]] = True
    mask[1, [0, 3]] = True
    context, target = mask_indices(mask)
    assert target.tolist() == [[1, 2], [0, 3]]  # sample 0 keeps its first two of three
    assert context.tolist() == [[0, 3, 4, 6, 7], [1, 2, 4, 5, 6]]


def test_masks_repeat_with_the_seed_and_change_between_batches():
    video = torch.zeros(4, 3, 4, 32, 32)
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        task = VJEPA(**TINY)
        draws.append([task.draw_masks(video) for _ in range(3)])
    for first, second in zip(*draws, strict=True):
        for (c1, t1), (c2, t2) in zip(first, second, strict=True):
            assert torch.equal(c1, c2) and torch.equal(t1, t2)
    steps = [torch.cat([t for _, t in masks], dim=1) for masks in draws[0]]
    assert not all(s.shape == steps[0].shape and torch.equal(s, steps[0]) for s in steps[1:])


def test_bad_masks_are_clear_errors():
    with pytest.raises(ValueError, match=r"covers the whole 2 x 4 x 4 grid"):
        multiblock_mask(1, (2, 4, 4), BlockMaskSpec(1, (1.0, 1.0), (1.0, 1.0)))
    with pytest.raises(ValueError, match="num_blocks must be at least 1"):
        BlockMaskSpec(0, (0.1, 0.1))
    with pytest.raises(ValueError, match=r"spatial_scale must be a range 0 < low <= high <= 1"):
        BlockMaskSpec(2, (0.5, 1.5))
    with pytest.raises(ValueError, match="a mask set needs num_blocks and spatial_scale"):
        VJEPA(**TINY, masks=[{"num_blocks": 4}])
    with pytest.raises(ValueError, match="has no token on a 2 x 2 grid"):
        block_size(BlockMaskSpec(1, (0.1, 0.1)), (1, 2, 2))
    with pytest.raises(ValueError, match=r"VJEPA needs a video ViT .* got backbone 'tiny3d'"):
        VJEPA(backbone="tiny3d", backbone_kwargs={"width": 4})


def test_masks_from_a_config_with_single_numbers():
    task = VJEPA(**TINY, masks=[{"num_blocks": 3, "spatial_scale": 0.2, "aspect_ratio": 1}])
    assert task.mask_specs == (BlockMaskSpec(3, (0.2, 0.2), (1.0, 1.0)),)
    assert task.predictor.mask_tokens.shape == (1, 16)  # one mask token per mask set


# ---------------------------------------------------------------- predictor
def test_3d_position_table_by_hand():
    # dim 12: 2 * ceil(12 / 6) = 4 channels each for t, h, w, frequencies 1 and 10000^-0.5.
    table = sincos_3d_position_embedding((2, 2, 3), 12)
    assert table.shape == (12, 12)
    for n in range(12):
        t, rest = divmod(n, 6)
        h, w = divmod(rest, 3)
        expected = []
        for p in (t, h, w):
            expected += [math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)]
        torch.testing.assert_close(table[n], torch.tensor(expected, dtype=torch.float32))


def test_predictor_output_shape_and_it_sees_only_the_context():
    torch.manual_seed(0)
    task = VJEPA(**TINY)
    video = _clips(t=4, size=32)  # grid 2 x 4 x 4
    masks = task.draw_masks(video)
    seen: list[torch.Tensor] = []
    task.predictor.embed.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    predictions, _ = task.predict(video, masks)
    for i, ((context, target), prediction) in enumerate(zip(masks, predictions, strict=True)):
        assert prediction.shape == (2, target.shape[1], 32)
        assert not set(context[0].tolist()) & set(target[0].tolist())
        expected = task.encoder_norm(task.encode_context(video, context))
        assert seen[i].shape == (2, context.shape[1], 32)
        torch.testing.assert_close(seen[i], expected)

    def pixels(clip: torch.Tensor, tokens: torch.Tensor, value: float) -> torch.Tensor:
        clip = clip.clone()
        for n in tokens.tolist():
            t, rest = divmod(n, 16)
            h, w = divmod(rest, 4)
            clip[0, :, 2 * t : 2 * t + 2, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8] = value
        return clip

    context, target = masks[0]
    with torch.no_grad():
        before = task.predict(video, [masks[0]])[0][0]
        changed_target = task.predict(pixels(video, target[0], 5.0), [masks[0]])[0][0]
        changed_context = task.predict(pixels(video, context[0, :1], 5.0), [masks[0]])[0][0]
    torch.testing.assert_close(changed_target, before)  # the targets' pixels are not seen
    assert not torch.allclose(changed_context[0], before[0])


def test_predictor_initialisation_is_the_official_one():
    torch.manual_seed(0)
    task = VJEPA(**{**TINY, "predictor_dim": 96, "predictor_depth": 2})
    p = task.predictor
    assert torch.all(p.mask_tokens == 0) and torch.all(p.embed.bias == 0)
    assert abs(p.embed.weight.std().item() - 0.02) < 0.002
    for layer, block in enumerate(p.blocks, start=1):  # residual outputs scaled by sqrt(2 l)
        std = block.mlp.fc2.weight.std().item()
        assert abs(std - 0.02 / math.sqrt(2 * layer)) < 0.1 * 0.02 / math.sqrt(2 * layer)


def test_encoder_initialisation_jepa_is_the_official_one():
    kwargs = {**TINY, "backbone_kwargs": {"dim": 64, "depth": 3, "heads": 2}}
    torch.manual_seed(0)
    task = VJEPA(**kwargs, encoder_init="jepa")
    trunk = task.backbone.trunk
    conv = trunk.patch_embed
    assert torch.all(conv.bias == 0) and abs(conv.weight.std().item() - 0.02) < 0.001
    for layer, block in enumerate(trunk.blocks, start=1):
        for linear, std in (
            (block.attn.qkv, 0.02),
            (block.mlp.fc1, 0.02),
            (block.attn.proj, 0.02 / math.sqrt(2 * layer)),  # official _rescale_blocks
            (block.mlp.fc2, 0.02 / math.sqrt(2 * layer)),
        ):
            assert torch.all(linear.bias == 0)
            assert abs(linear.weight.std().item() - std) < 0.05 * std, (layer, linear)
        assert torch.all(block.norm1.weight == 1) and torch.all(block.norm1.bias == 0)
    online = task._online_encoder()
    for p, q in zip(online.parameters(), task.target_encoder.module.parameters(), strict=True):
        assert torch.equal(p, q)  # the target is copied after the initialisation
    torch.manual_seed(0)
    default = VJEPA(**kwargs).backbone.trunk.blocks[0].attn.qkv.weight.std().item()
    assert abs(default - math.sqrt(2 / (64 + 192))) < 0.005  # the video ViT's Xavier uniform
    with pytest.raises(ValueError, match="encoder_init must be one of"):
        VJEPA(**TINY, encoder_init="xavier")


def test_gradient_clipping_per_network_after_the_warm_up():
    task = VJEPA(**TINY, num_classes=4, clip_grad=1.0, warmup_epochs=2)
    encoder = [p for p in task._online_encoder().parameters() if p.requires_grad]
    predictor = list(task.predictor.parameters())
    probe = list(task.probe.parameters())
    for p in encoder + predictor + probe:
        p.grad = torch.full_like(p, 3.0)

    def norm(params):
        return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()

    n_encoder, n_predictor = (sum(p.numel() for p in ps) for ps in (encoder, predictor))
    task.clip_gradients_per_network(epoch=2)  # epoch 2 is not past 2 warm-up epochs
    assert norm(encoder) == pytest.approx(3 * math.sqrt(n_encoder))
    task.clip_gradients_per_network(epoch=3)
    assert norm(encoder) == pytest.approx(1.0, rel=1e-5)  # each network to norm 1 on its own
    assert norm(predictor) == pytest.approx(1.0, rel=1e-5)
    assert encoder[0].grad.flatten()[0].item() == pytest.approx(1 / math.sqrt(n_encoder), rel=1e-5)
    assert predictor[0].grad.flatten()[0].item() == pytest.approx(
        1 / math.sqrt(n_predictor), rel=1e-5
    )
    assert all(torch.all(p.grad == 3.0) for p in probe)  # the online probe is not clipped
    optimizer = torch.optim.AdamW(task.parameter_groups())
    with pytest.raises(ValueError, match="unset trainer.gradient_clip_val"):
        task.configure_gradient_clipping(optimizer, 10.0, "norm")
    with pytest.raises(ValueError, match="clip_grad must be positive"):
        VJEPA(**TINY, clip_grad=0.0)


def test_crop_ratio_sets_the_training_crop_aspect_range():
    from vssl.data.sampling import ClipSpec

    spec = ClipSpec(clip_len=4, crop_size=32, flip=False, scale=(0.3, 1.0))
    crop = VJEPA(**TINY, crop_ratio=[0.75, 1.35]).clip_transform("train", spec).transform
    resize = crop.transforms[0]
    assert (resize.scale, resize.ratio) == ((0.3, 1.0), (0.75, 1.35))
    assert len(crop.transforms) == 1  # no flip where the data forbids it
    default = VJEPA(**TINY).clip_transform("train", spec).transform.transforms[0]
    assert default.ratio == pytest.approx((3 / 4, 4 / 3))
    with pytest.raises(ValueError, match="crop_ratio must be a range"):
        VJEPA(**TINY, crop_ratio=[1.5, 0.5])


# ---------------------------------------------------------------- loss and target
def test_l1_loss_by_hand():
    p1, t1 = torch.zeros(1, 2, 2), torch.tensor([[[1.0, -2.0], [3.0, 0.0]]])  # mean |.| 1.5
    p2, t2 = torch.ones(1, 1, 2), torch.tensor([[[2.0, 5.0]]])  # (1 + 4) / 2 = 2.5
    assert jepa_loss([p1, p2], [t1, t2]).item() == pytest.approx(2.0)
    assert jepa_loss([p1], [t1]).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"prediction \(1, 1, 2\) and target \(1, 2, 2\) differ"):
        jepa_loss([p2], [t1])


def test_step_loss_is_the_l1_to_the_layer_normed_target_tokens():
    torch.manual_seed(0)
    task = VJEPA(**TINY)
    with torch.no_grad():  # make the target encoder differ from the context encoder
        for p in task.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    video = _clips(t=4, size=32)
    task._mask_generator = _gen(11)
    loss = task.step({"video": video}, "train").loss
    task._mask_generator = _gen(11)
    masks = task.draw_masks(video)
    target = task.target_encoder.module
    with torch.no_grad():
        raw = target["norm"](target["backbone"].encode(target["backbone"].embed(video))).double()
        predictions, _ = task.predict(video, masks)
    normed = (raw - raw.mean(-1, keepdim=True)) / torch.sqrt(
        raw.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    expected = np.mean(
        [
            np.abs(pred.double().numpy() - normed[torch.arange(2)[:, None], idx].numpy()).mean()
            for pred, (_, idx) in zip(predictions, masks, strict=True)
        ]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    full = task.target_features(video)
    torch.testing.assert_close(full.mean(-1), torch.zeros(2, 32), atol=1e-5, rtol=0)


def test_target_follows_the_ema_rule_after_an_optimiser_step(monkeypatch):
    torch.manual_seed(0)
    task = VJEPA(**TINY, num_classes=4)
    online = task._online_encoder()
    target = task.target_encoder.module
    for (name, p), q in zip(online.named_parameters(), target.parameters(), strict=True):
        assert torch.equal(p, q), name  # starts as a copy
    optimizer = torch.optim.AdamW(task.parameter_groups())
    out = task.step({"video": _clips(t=4, size=32)}, "train")
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in task.target_encoder.parameters())
    before = [p.clone() for p in target.parameters()]
    optimizer.step()
    monkeypatch.setattr(task, "training_progress", lambda: 0.5)
    task.after_optimizer_step()
    m = 0.998 + 0.002 * 0.5 / 1.25  # linear, over 1.25 times the training
    assert task.target_encoder.momentum == pytest.approx(m)
    moved = 0
    for old, p, q in zip(before, online.parameters(), target.parameters(), strict=True):
        torch.testing.assert_close(q, m * old + (1 - m) * p)
        moved += not torch.equal(q, old)
    assert moved > 0


# ---------------------------------------------------------------- optimisation
def test_lr_and_weight_decay_schedules_are_the_official_ones():
    task = VJEPA(**TINY, warmup_epochs=2)
    low = 1e-6 / 6.25e-4
    # 100 steps of 10 per epoch: 20 warm-up steps from 0.32 lr, the cosine over 125 - 20 steps.
    assert task.lr_factor(0, 100, 10) == pytest.approx(0.32 + 0.68 / 20)
    assert task.lr_factor(18, 100, 10) == pytest.approx(0.32 + 0.68 * 19 / 20)
    assert task.lr_factor(19, 100, 10) == pytest.approx(1.0)
    last = low + (1 - low) * 0.5 * (1 + math.cos(math.pi * 80 / 105))
    assert task.lr_factor(99, 100, 10) == pytest.approx(last)
    assert task.weight_decay_at(0, 100) == pytest.approx(
        0.4 - 0.36 * 0.5 * (1 + math.cos(math.pi / 125))
    )
    assert task.weight_decay_at(99, 100) == pytest.approx(
        0.4 - 0.36 * 0.5 * (1 + math.cos(math.pi * 0.8))
    )
    constant = VJEPA(**TINY, final_weight_decay=None)
    assert constant.weight_decay_at(50, 100) == 0.04


def test_optimizer_groups():
    task = VJEPA(**TINY, num_classes=4, probe_lr=0.05)
    decay, no_decay, probe = task.parameter_groups()
    names = {id(p): n for n, p in task.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["scheduled_weight_decay"] and "scheduled_weight_decay" not in no_decay
    assert (decay["weight_decay"], no_decay["weight_decay"], probe["weight_decay"]) == (
        0.04,
        0.0,
        0.0,
    )
    assert {"predictor.mask_tokens", "predictor.embed.weight", "predictor.proj.weight"} <= (
        decay_names
    )
    assert {"encoder_norm.weight", "predictor.embed.bias", "predictor.norm.weight"} <= (
        no_decay_names
    )
    trained = {
        n for n, p in task.named_parameters() if p.requires_grad and not n.startswith("probe.")
    }
    assert decay_names | no_decay_names == trained and not decay_names & no_decay_names
    assert not any(n.startswith("target_encoder.") for n in trained)


def test_paper_defaults():
    with torch.device("meta"):
        task = VJEPA()
    hp = task.hparams
    assert task.mask_specs == PAPER_MASKS
    assert (task.predictor.dim, len(task.predictor.blocks)) == (384, 12)
    assert task.predictor.blocks[0].attn.heads == task.backbone.trunk.blocks[0].attn.heads
    assert task.target_encoder.base_momentum == 0.998
    assert task.target_encoder.final_momentum == 1.0
    assert task.target_encoder.schedule == "linear"
    assert (hp.optimizer, hp.lr, hp.weight_decay, hp.final_weight_decay) == (
        "adamw",
        6.25e-4,
        0.04,
        0.4,
    )
    assert (hp.warmup_epochs, hp.lr * hp.start_lr_ratio, hp.lr * hp.min_lr_ratio) == (
        40.0,
        pytest.approx(2e-4),
        pytest.approx(1e-6),
    )
    assert hp.schedule_scale == 1.25 and not task.augment.photometric


# ---------------------------------------------------------------- command line
def test_cli_training_lowers_the_loss_and_schedules_the_momentum(tiny_synthetic, tmp_path, run_cli):
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=3)
    cfg["model"] = {
        "class_path": "vssl.tasks.VJEPA",
        "init_args": {**TINY, "lr": 0.003, "warmup_epochs": 0},
    }
    cfg["data"]["init_args"].update(
        clip_len=8, stride=2, crop_size=32, decode_size=32, batch_size=4, num_workers=0
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", "run.yaml", "--trainer.logger.init_args.name", "j"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "runs" / "j" / "version_0" / "metrics.csv").open()))
    train = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(train) == len(val) == 3 and all(np.isfinite(train + val))
    assert train[-1] < train[0] - 0.05 and val[-1] < val[0]
    assert "val/probe_acc" in rows[0]
    momenta = [
        float(r["train/ema_momentum_step"]) for r in rows if r.get("train/ema_momentum_step")
    ]
    # 12 training videos in batches of 4 for 3 epochs: 9 steps; step k logs the momentum set
    # after step k - 1, 0.998 + 0.002 * ((k - 1) / 8) / 1.25.
    assert len(momenta) == 9
    expected = [0.998] + [0.998 + 0.002 * (k - 1) / 8 / 1.25 for k in range(1, 9)]
    np.testing.assert_allclose(momenta, expected, rtol=0, atol=1e-7)  # logged as float32
