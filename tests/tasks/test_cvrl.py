"""CVRL: the gap sampler, NT-Xent (by hand and under 2-process DDP), the per-clip augmentation, and
training through the command line."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import run_vssl, tiny_config
from lightning.pytorch import Callback
from torch.nn import functional as F

from vssl.data import VideoDataset, VideoIndex, VideoItem
from vssl.data.sampling import ClipSpec, CVRLClips, sample_cvrl_starts
from vssl.losses.nt_xent import nt_xent
from vssl.tasks import CVRL

TINY = {
    "backbone": "tiny3d",
    "backbone_kwargs": {"width": 4},
    "hidden_dim": 16,
    "projection_dim": 8,
}


def _starts(num_frames, clip_len, stride, draws, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([sample_cvrl_starts(num_frames, clip_len, stride, rng) for _ in range(draws)])


def _gap_cdf(d, m):
    return 2 * d / m - d**2 / m**2


# ---------------------------------------------------------------- temporal sampling
@pytest.mark.parametrize(
    ("num_frames", "clip_len", "stride"), [(35, 16, 2), (70, 16, 2), (300, 8, 1)]
)
def test_gaps_follow_the_linear_density(num_frames, clip_len, stride):
    m = num_frames - (clip_len - 1) * stride  # 5, 40, 293 valid starts
    draws = 20000
    gaps = np.abs(np.diff(_starts(num_frames, clip_len, stride, draws), axis=1)[:, 0])
    assert gaps.min() >= 0 and gaps.max() <= m - 1
    # Kolmogorov-Smirnov against the exact law of the rounded-down gap, P(gap <= d) = F(d + 1):
    # both CDFs are steps at the integers, so the supremum is reached there. The asymptotic
    # critical value is conservative for a discrete law.
    d = np.arange(m)
    empirical = np.searchsorted(np.sort(gaps), d, side="right") / draws
    critical = 1.949 / math.sqrt(draws)  # alpha = 0.001
    assert np.abs(empirical - _gap_cdf(d + 1, m)).max() < critical
    # The same test rejects a uniform gap, and where M is small a gap rounded up instead of down.
    assert np.abs(empirical - (d + 1) / m).max() > critical
    if m <= 40:
        assert np.abs(empirical - _gap_cdf(d, m)).max() > critical


def test_both_clips_lie_inside_the_video():
    sampler = CVRLClips(clip_len=4, stride=3)  # span 10
    rng = np.random.default_rng(1)
    for num_frames in (10, 11, 13, 40):
        seen = set()
        for _ in range(400):
            views = sampler(num_frames, rng)
            for clip in views.values():
                assert clip.shape == (4,) and np.all(np.diff(clip) == 3)
                assert 0 <= clip[0] and clip[-1] < num_frames
                seen.add(int(clip[0]))
        assert seen == set(range(num_frames - 9))  # every valid start occurs
    # Exactly one valid start: both clips are the same frames (as in the official code).
    assert _starts(10, 4, 3, 50).tolist() == [[0, 0]] * 50


def test_order_is_swapped_half_of_the_time():
    starts = _starts(100, 16, 2, 8000, seed=2)
    apart = starts[starts[:, 0] != starts[:, 1]]
    later_first = np.mean(apart[:, 0] > apart[:, 1])
    sigma = math.sqrt(0.25 / len(apart))
    assert abs(later_first - 0.5) < 4 * sigma


def test_short_video_draws_both_starts_independently_and_wraps():
    # 6 frames, clip span 7: no valid start, so both starts are uniform on [0, 6), independent.
    starts = _starts(6, 4, 2, 12000, seed=3)
    pairs = np.bincount(starts[:, 0] * 6 + starts[:, 1], minlength=36)
    expected = len(starts) / 36
    assert set(starts.ravel().tolist()) == set(range(6))
    assert np.abs(pairs - expected).max() < 5 * math.sqrt(expected)  # all 36 pairs, equally often
    views = CVRLClips(clip_len=4, stride=2)(6, np.random.default_rng(4))
    for clip in views.values():
        assert clip.tolist() == [(int(clip[0]) + 2 * k) % 6 for k in range(4)]
    one_frame = _starts(1, 4, 2, 5)
    assert one_frame.tolist() == [[0, 0]] * 5


def test_sampler_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least one frame"):
        sample_cvrl_starts(0, 4, 1, rng)
    with pytest.raises(ValueError, match="clip_len"):
        sample_cvrl_starts(10, 0, 1, rng)


def test_dataset_serves_the_two_sampled_clips(video_factory, frame_index):
    path = video_factory("a.mp4", num_frames=24, gop=6)
    task = CVRL(**TINY)
    spec = ClipSpec(clip_len=4, stride=2, crop_size=32)
    index = VideoIndex.build([path], progress=False, cache_dir=Path(path).parent / "cache")
    ds = VideoDataset(
        [VideoItem(Path(path), 0)],
        [index[path]],
        task.clip_sampler("val", spec),
        task.clip_transform("val", spec),
    )
    torch.manual_seed(0)
    for _ in range(4):
        sample = ds[0]
        for view in ("video", "video2"):
            assert sample[view].shape == (4, 3, 32, 32) and sample[view].dtype == torch.uint8
            idx = [frame_index(f) for f in sample[view]]
            assert np.all(np.diff(idx) == 2) and 0 <= idx[0] and idx[-1] < 24


# ---------------------------------------------------------------- NT-Xent
def _neg_log_softmax(logits, positive):
    return -logits[positive] + math.log(sum(math.exp(v) for v in logits))


def test_nt_xent_equals_a_hand_computation():
    # Normalised: a0 = (1, 0), a1 = (0, 1), b0 = (0.6, 0.8), b1 = (-1, 0); tau = 0.5.
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z2 = torch.tensor([[3.0, 4.0], [-0.5, 0.0]])
    out = nt_xent(z1, z2, temperature=0.5)
    # Candidates of an anchor: the other view of every sample, then its own view of the others.
    a0 = _neg_log_softmax([0.6 / 0.5, -1 / 0.5, 0 / 0.5], 0)
    a1 = _neg_log_softmax([0.8 / 0.5, 0 / 0.5, 0 / 0.5], 1)
    b0 = _neg_log_softmax([0.6 / 0.5, 0.8 / 0.5, -0.6 / 0.5], 0)
    b1 = _neg_log_softmax([-1 / 0.5, 0 / 0.5, -0.6 / 0.5], 1)
    expected = (a0 + a1) / 2 + (b0 + b1) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.accuracy.item() == 0.5  # a0 and b1 rank their positive first, a1 and b0 do not


def test_nt_xent_rows_of_each_process_average_to_the_global_loss():
    # W processes each score their own n anchors against all N = W * n samples. Emulated in one
    # graph: gather returns every process's (normalised) rows, so gradients reach all of them as
    # all_gather(sync_grads=True) makes them under DDP (checked for real further down).
    torch.manual_seed(0)
    base = torch.randn(6, 5)
    z1 = base.clone().requires_grad_()
    z2 = (base + 0.3 * torch.randn(6, 5)).requires_grad_()  # each pair alike, pairs unalike
    full = nt_xent(z1, z2, 0.1).loss
    want1, want2 = torch.autograd.grad(full, (z1, z2))
    world, n = 3, 2
    everyone = (F.normalize(z1, dim=1), F.normalize(z2, dim=1))

    def gather(z):
        for rows in everyone:
            if any(torch.equal(z, rows[i : i + n]) for i in range(0, world * n, n)):
                return rows
        raise AssertionError("gather got rows of neither view")

    losses = [
        nt_xent(z1[r * n : (r + 1) * n], z2[r * n : (r + 1) * n], 0.1, gather, rank=r).loss
        for r in range(world)
    ]
    assert len({round(v.item(), 6) for v in losses}) == world  # each process's own loss differs
    mean = torch.stack(losses).mean()
    assert mean.item() == pytest.approx(full.item(), rel=1e-6)
    got1, got2 = torch.autograd.grad(mean, (z1, z2))
    assert torch.allclose(got1, want1, atol=1e-6) and torch.allclose(got2, want2, atol=1e-6)
    wrong_rank = nt_xent(z1[:n], z2[:n], 0.1, gather, rank=1).loss  # positives in the wrong place
    assert wrong_rank.item() > losses[0].item() + 1


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError, match=r"same shape \(n, D\), got \(2, 3\) and \(3, 3\)"):
        nt_xent(torch.zeros(2, 3), torch.zeros(3, 3))


# ---------------------------------------------------------------- augmentation
def test_worker_crop_is_one_per_clip_and_independent_between_clips():
    task = CVRL(**TINY)
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    clip = frame.expand(6, -1, -1, -1).clone()
    transform = task.clip_transform("train", ClipSpec(clip_len=6, crop_size=16, flip=True))
    crop, flip = transform.transform.transforms
    assert (crop.scale, crop.ratio) == ((0.3, 1.0), (0.5, 2.0))
    for _ in range(5):
        out = transform({"video": clip, "video2": clip.clone(), "label": torch.tensor(3)})
        for view in ("video", "video2"):
            assert out[view].shape == (6, 3, 16, 16)
            assert all(torch.equal(f, out[view][0]) for f in out[view])  # every frame alike
        assert not torch.equal(out["video"], out["video2"])  # the clips' crops differ
        assert out["label"].item() == 3
    no_flip = task.clip_transform("train", ClipSpec(crop_size=16, flip=False))
    assert len(no_flip.transform.transforms) == 1


def test_device_augmentation_is_one_per_clip_and_differs_between_clips():
    task = CVRL(**TINY)
    assert (task.augment.blur_p, task.augment.solarize_p) == (1.0, 0.0)
    assert (task.augment2.blur_p, task.augment2.solarize_p) == (0.1, 0.2)
    for aug in (task.augment, task.augment2):
        assert (aug.brightness, aug.contrast, aug.saturation, aug.hue) == (0.8, 0.8, 0.8, 0.2)
        assert (aug.jitter_p, aug.random_order, aug.grayscale_p) == (0.8, True, 0.2)
        assert aug.blur_sigma == (0.1, 2.0)
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (8, 1, 3, 16, 16), dtype=torch.uint8)
    video = frames.expand(-1, 4, -1, -1, -1).clone()  # 8 clips of 4 identical frames
    out = task.augment_batch({"video": video.clone(), "video2": video.clone()})
    for view in ("video", "video2"):
        x = out[view]
        assert x.shape == (8, 3, 4, 16, 16) and x.dtype == torch.float32
        assert torch.allclose(x, x[:, :, :1].expand_as(x), atol=1e-6)  # one parameter set per clip
    assert all(not torch.allclose(out["video"][b], out["video2"][b]) for b in range(8))
    task.eval()  # validation: normalisation only, the same for both clips
    out = task.augment_batch({"video": video.clone(), "video2": video.clone()})
    assert torch.equal(out["video"], out["video2"])


def test_augment2_is_merged_over_augment():
    task = CVRL(**TINY, augment={"jitter_p": 0.5, "blur_p": 0.3}, augment2={"solarize_p": 0.4})
    assert (task.augment.jitter_p, task.augment.blur_p, task.augment.solarize_p) == (0.5, 0.3, 0.0)
    aug2 = task.augment2
    assert (aug2.jitter_p, aug2.blur_p, aug2.solarize_p) == (0.5, 0.3, 0.4)


def test_task_defaults_and_head():
    task = CVRL(backbone="tiny3d")
    hp = task.hparams
    assert (hp.optimizer, hp.lr, hp.reference_batch_size, hp.momentum) == ("sgd", 0.32, 1024, 0.9)
    assert (hp.weight_decay, hp.lr_schedule, hp.warmup_epochs) == (1e-6, "cosine", 5.0)
    assert hp.temperature == 0.1
    linear = [(m.in_features, m.out_features) for m in task.head if isinstance(m, torch.nn.Linear)]
    assert linear == [(64, 2048), (2048, 2048), (2048, 2048), (2048, 128)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in task.head) == 3
    with pytest.raises(ValueError, match="crop_area"):
        CVRL(backbone="tiny3d", crop_area=(0.0, 1.0))


# ---------------------------------------------------------------- training, one and two processes
class RecordFirstStep(Callback):
    """Saves, per process, the weights, augmented batch, loss and synced gradients of step 0."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.record: dict = {}

    def on_train_start(self, trainer, pl_module):
        self.record["state"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.record["batch"] = {k: batch[k].detach().clone() for k in ("video", "video2")}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if "grads" not in self.record:
            grads = {n: p.grad for n, p in pl_module.named_parameters() if p.grad is not None}
            self.record["grads"] = {n: g.detach().clone() for n, g in grads.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.record["loss"] = outputs["loss"].detach().clone()
            self.record["world_size"] = trainer.world_size
            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


# Colour jitter at a quarter of the paper's strength, as configs/cvrl/synthetic_tiny.yaml: at full
# strength a tiny CNN on the near-grey synthetic clips stays at chance for many epochs.
MILD_AUGMENT = {
    "brightness": 0.2,
    "contrast": 0.2,
    "saturation": 0.2,
    "hue": 0.05,
    "jitter_p": 0.8,
    "grayscale_p": 0.2,
    "blur_p": 1.0,
}


def _cvrl_config(root, cache, **trainer):
    cfg = tiny_config(root, cache, **trainer)
    cfg["model"] = {
        "class_path": "vssl.tasks.CVRL",
        "init_args": {
            **TINY,
            "optimizer": "adamw",
            "lr": 0.01,
            "weight_decay": 0.01,
            "reference_batch_size": None,
            "warmup_epochs": 0,
            "augment": MILD_AUGMENT,
        },
    }
    return cfg


def test_ddp_step_loss_and_gradients_equal_one_process_on_the_whole_batch(tiny_synthetic, tmp_path):
    cfg = _cvrl_config(
        tiny_synthetic,
        tmp_path / "cache",
        strategy="ddp",
        devices=2,
        max_steps=1,
        limit_val_batches=0,
    )
    cfg["model"]["init_args"]["online_probe"] = False
    cfg["data"]["init_args"].update(batch_size=3, num_workers=0)  # see test_cli's DDP test
    cfg["trainer"]["callbacks"] = [
        {"class_path": "test_cvrl.RecordFirstStep", "init_args": {"out_dir": str(tmp_path / "rec")}}
    ]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_vssl(["fit", "--config", "run.yaml"], tmp_path)
    recs = [torch.load(tmp_path / "rec" / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in recs] == [2, 2]
    assert recs[0]["batch"]["video"].dtype == torch.float32  # recorded after device augmentation

    task = CVRL(**TINY)
    task.load_state_dict(recs[0]["state"])
    task.train()
    # Batch norm on the CPU is per process (SyncBatchNorm is CUDA-only): project each process's
    # clips separately, then take one NT-Xent over the concatenated batch of 6 samples.
    parts = [task.project(r["batch"]["video"], r["batch"]["video2"]) for r in recs]
    z1, z2 = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    loss = nt_xent(z1, z2, 0.1).loss
    loss.backward()
    rank_losses = torch.stack([r["loss"] for r in recs])
    assert loss.item() == pytest.approx(rank_losses.mean().item(), rel=1e-5)
    local_only = np.mean([nt_xent(p[0], p[1], 0.1).loss.item() for p in parts])
    assert abs(local_only - loss.item()) > 1e-3  # without gathering the loss would differ
    grads = recs[0]["grads"]
    assert set(grads) == {n for n, _ in task.named_parameters()}
    largest = max(g.abs().max().item() for g in grads.values())
    for name, param in task.named_parameters():
        assert torch.equal(grads[name], recs[1]["grads"][name])  # DDP averaged them
        # float32 sums in another order: compare against the size of the largest gradient (a
        # bias followed by batch norm has a true gradient of zero, so its own scale is noise)
        assert (param.grad - grads[name]).abs().max().item() <= 1e-4 * largest + 1e-5, name


def test_cli_training_lowers_the_loss(tiny_synthetic, tmp_path, run_cli):
    cfg = _cvrl_config(tiny_synthetic, tmp_path / "cache", max_epochs=8)
    cfg["data"]["init_args"]["batch_size"] = 4
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", "run.yaml", "--trainer.logger.init_args.name", "c"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "runs" / "c" / "version_0" / "metrics.csv").open()))
    train = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(train) == len(val) == 8
    # The train loss (3 steps an epoch under strong augmentation) is too noisy to compare epochs;
    # validation uses centre crops and no colour changes.
    assert all(np.isfinite(train))
    # Validation (centre crops, no colour changes) starts at chance, 2 ln(2N - 1) for N = 4.
    assert val[0] == pytest.approx(2 * math.log(7), abs=0.1)
    assert np.mean(val[-3:]) < val[0] - 0.4
    assert {"val/loss", "val/contrast_acc", "train/contrast_acc_step"} <= set(rows[0])
