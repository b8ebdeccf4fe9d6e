"""AVID: audio-visual instance discrimination, video <-> audio NCE against a memory bank.

Morgado et al., "Audio-Visual Instance Discrimination with Cross-Modal Agreement", CVPR 2021,
https://arxiv.org/abs/2004.12943. vssl follows the official code (facebookresearch/AVID-CMA:
``criterions/avid.py`` ``AVIDSimilarityMemoryBank`` and ``AVID``, ``criterions/nce.py``
``NCECriterion``, ``models/av_wrapper.py``, ``configs/main/avid/kinetics/Cross-N1024.yaml``):

- Sampling (`AudioVisualClip`): one clip of ``clip_len`` frames every ``stride`` frames at a
  random start (the centre clip in evaluation), and ``audio_seconds`` of sound (official: 0.5 s
  of video at 16 fps, 2 s of audio at 24 kHz). In training the window is placed as the official
  loader does with ``max_offsync_augm=0.5`` (``audio_offsync``; `vssl.data.sampling.AudioSpan`):
  the clip lies anywhere from 0.5 s before the window's start to 0.5 s after its end, the window
  inside the video; in evaluation it is centred on the clip. Videos without an audio stream are
  left out when the dataset is built (one logged count).
- Audio input: in training each waveform's volume is scaled by a factor uniform in
  ``1 +- volume_jitter`` (`volume_jitter`; official ``AudioPrepLibrosa``: 10%), then a log
  spectrogram on the device (`vssl.data.audio.LogMelSpectrogram`; official: ``n_fft`` 512 at 100
  frames per second, 257 linear bins: ``n_mels`` None). Video: the datamodule's crops and
  `BatchAugment` (the paper config sets the official ``msc+color``: crops of 0.08..1 of the
  area, flip, colour jitter 0.4 / 0.4 / 0.4 / hue 0.2).
- Encoders: the video backbone and an audio backbone (`vssl.backbones.registry.build_audio`),
  each followed by `AVIDProjectionHead` (official ``Head``: Linear layers with ReLU between;
  ``proj_dim`` 128, one Linear, in the R(2+1)D-18 Kinetics config, ``[512, 512, 128]`` in the
  others), L2-normalised.
- Memory (`InstanceMemory`): one unit vector per training video and modality. For a batch of
  videos ``y``: positives are the memories of ``y``, negatives ``num_negatives`` memories drawn
  uniformly from the other videos (per sample, the sample's own index excluded). Scores are
  dot products over ``temperature`` (0.07). After the scores, the memories of ``y`` move to the
  new embeddings, ``m <- normalize(momentum * m + (1 - momentum) * e)`` (official 0.5), with the
  embeddings of every process under DDP.
- Loss (`nce_loss`, the official ``NCECriterion``): with ``P(s) = exp(s)`` and the partition
  constant ``Z`` (the mean of ``exp`` of the negative scores of the first training batch, then
  fixed; one ``Z`` for every direction, as the official single criterion), each positive is
  classified as data, ``-log(P+ / (P+ + K Z))``, and each negative as noise,
  ``-log(K Z / (P- + K Z))``, summed over negatives and averaged over the batch. Cross-modal
  ("Cross" in the paper): video vs. audio memories (v2a) and audio vs. video memories (a2v);
  ``within_weight`` adds v2v and a2a ("Joint"). The total is ``sum_d w_d L_d / 2`` with the two
  weights normalised to sum to 1 (official ``loss_coeff``).

``negatives="batch"`` (not in the paper; the CPU config's choice) trains without the memory:
each clip's negatives are the other sounds of the (global) batch and each sound's the other
clips, by the cross-modal InfoNCE `batch_nce` at the same temperature. On the synthetic data
on a CPU the memory's NCE learned little in the steps a CPU affords, the in-batch loss a lot
(`docs/fidelity.md` has the figures).

Evaluation stages have no memory of their videos: their loss is the in-batch cross-modal
InfoNCE (each clip against the batch's audio, and each audio against the batch's clips), and
``xmodal_acc`` (logged in every stage) is the share of clips whose own audio is the nearest of
the batch's. CMA (the cross-modal agreement stage of the paper) is not part of vssl's AVID;
`docs/fidelity.md` lists every setting against the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.backbones.registry import build_audio
from vssl.data.audio import LogMelSpectrogram
from vssl.data.sampling import AudioSpan, ClipSampler, ClipSpec, UniformClips, clip_indices
from vssl.data.sampling import clip_span as _clip_span
from vssl.tasks.base import StepOutput, VSSLTask

__all__ = [
    "AVID",
    "AVIDProjectionHead",
    "AudioVisualClip",
    "InstanceMemory",
    "batch_nce",
    "nce_loss",
    "volume_jitter",
]


@dataclass
class AudioVisualClip(ClipSampler):
    """One clip (``video``) and ``audio_seconds`` of its sound (``audio``).

    ``random``: a uniformly random start (training); otherwise the centre clip. ``offsync``
    None: the sound is centred on the clip; seconds >= 0, with ``random``: the window is placed
    by AVID's official rule (`AudioSpan`'s ``offsync``), one uniform draw per sample after the
    clip's start. The evaluation clip's sound is always centred.
    """

    clip_len: int = 8
    stride: int = 1
    audio_seconds: float = 2.0
    sample_rate: int = 24000
    mono: bool = True
    random: bool = True
    offsync: float | None = None

    needs_audio = True

    def __post_init__(self) -> None:
        _clip_span(self.clip_len, self.stride)
        if not self.audio_seconds > 0 or self.sample_rate <= 0:
            raise ValueError(
                f"audio_seconds and sample_rate must be positive, got {self.audio_seconds} and "
                f"{self.sample_rate}"
            )
        if self.offsync is not None and not self.offsync >= 0:
            raise ValueError(f"offsync must be >= 0 seconds or None, got {self.offsync}")

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, Any]:
        span = _clip_span(self.clip_len, self.stride)
        if self.random:
            start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else 0
        else:
            start = int(UniformClips(self.clip_len, self.stride, 1).starts(num_frames)[0])
        offsync = self.offsync if self.random else None
        draw = float(rng.random()) if offsync is not None else 0.5
        audio = AudioSpan(
            start,
            start + span,
            self.audio_seconds,
            self.sample_rate,
            self.mono,
            offsync=offsync,
            draw=draw,
            video_frames=num_frames,
        )
        return {
            "video": clip_indices(start, self.clip_len, self.stride, num_frames),
            "audio": audio,
        }


def volume_jitter(
    waveform: Tensor, amount: float, generator: torch.Generator | None = None
) -> Tensor:
    """AVID's volume augmentation: waveforms ``(B, C, N)`` each scaled by one factor drawn
    uniformly from ``[1 - amount, 1 + amount]``."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"the volume jitter must be in [0, 1), got {amount}")
    if waveform.ndim != 3:
        raise ValueError(f"volume_jitter expects (B, C, N) waveforms, got {tuple(waveform.shape)}")
    if amount == 0:
        return waveform
    device = generator.device if generator is not None else waveform.device
    u = torch.rand(waveform.shape[0], 1, 1, generator=generator, device=device).to(waveform)
    return waveform * (1.0 - amount + 2.0 * amount * u)


class AVIDProjectionHead(nn.Sequential):
    """AVID's projection (official ``Head``): a Linear to each size of ``dims`` with a ReLU
    between consecutive ones; the loss L2-normalises its output."""

    def __init__(self, in_dim: int, dims: Sequence[int] = (128,)) -> None:
        dims = list(dims)
        if in_dim < 1 or not dims or min(dims) < 1:
            raise ValueError(f"projection sizes must be positive, got {in_dim} -> {dims}")
        layers: list[nn.Module] = []
        for i, d in enumerate(dims):
            layers.append(nn.Linear(in_dim, d))
            in_dim = d
            if i < len(dims) - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InstanceMemory(nn.Module):
    """One unit vector per training video for each modality (``video``, ``audio``: ``(N, D)``
    buffers, saved in checkpoints); random unit vectors at first, as the official memory.

    ``size`` 0 is a memory not sized yet (`resize`, which the task calls at setup with the
    training set's size); loading a state dict sizes it as the saved one.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 0 or dim < 1:
            raise ValueError(f"memory size must be >= 0 and dim >= 1, got {size} and {dim}")
        self.dim = dim
        self.register_buffer("video", torch.zeros(0, dim))
        self.register_buffer("audio", torch.zeros(0, dim))
        self.resize(size)

    @property
    def size(self) -> int:
        """Videos the memory holds."""
        return self.video.shape[0]

    def resize(self, size: int) -> None:
        """Start over with ``size`` random unit vectors per modality."""
        device = self.video.device
        self.video = F.normalize(torch.randn(size, self.dim, device=device), dim=1)
        self.audio = F.normalize(torch.randn(size, self.dim, device=device), dim=1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "video")
        if saved is not None and saved.shape[0] != self.size:
            self.resize(saved.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def negatives(
        self, index: Tensor, count: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``(B, count)`` indices drawn uniformly from the memory, each row without its own
        ``index`` (the official ``random_sampling``)."""
        if self.size < 2:
            raise ValueError(
                f"the memory needs at least 2 videos to draw negatives, has {self.size}"
            )
        drawn = torch.randint(0, self.size - 1, (len(index), count), generator=generator)
        drawn = drawn.to(index.device)
        return drawn + (drawn >= index[:, None]).long()

    @torch.no_grad()
    def update(self, index: Tensor, video: Tensor, audio: Tensor, momentum: float) -> None:
        """``m <- normalize(momentum * m + (1 - momentum) * e)`` at rows ``index``."""
        for bank, new in ((self.video, video), (self.audio, audio)):
            moved = momentum * bank[index] + (1 - momentum) * new.detach().to(bank.dtype)
            bank.index_copy_(0, index, F.normalize(moved, dim=1))


def nce_loss(positive: Tensor, negative: Tensor, z: Tensor | float) -> Tensor:
    """The official ``NCECriterion`` on scores ``positive`` ``(B,)`` and ``negative``
    ``(B, K)`` (already divided by the temperature): ``mean_b [-log(P+ / (P+ + K Z)) -
    sum_k log(K Z / (P-_k + K Z))]`` with ``P = exp(score)`` and the partition constant ``z``."""
    k = negative.shape[1]
    noise = k * torch.as_tensor(z, dtype=positive.dtype, device=positive.device)
    data = -(positive - torch.logaddexp(positive, noise.log()))
    noise_term = -(noise.log() - torch.logaddexp(negative, noise.log())).sum(dim=1)
    return (data + noise_term).mean()


def batch_nce(query: Tensor, keys: Tensor, temperature: float, rank: int = 0) -> Tensor:
    """Cross-modal InfoNCE of unit embeddings: query ``i`` ``(n, D)`` against every key
    ``(W * n, D)``, its own (row ``rank * n + i``) the positive, ``mean_i -log(exp(q_i . k_i /
    t) / sum_j exp(q_i . k_j / t))``. ``keys`` are the batch's other modality, gathered from
    every process (rank-major) under DDP."""
    logits = query @ keys.T / temperature
    targets = rank * len(query) + torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits, targets)


class AVID(VSSLTask):
    """Audio-visual instance discrimination (see the module docstring for the official rules).

    Args:
        audio_backbone: a name from `vssl.backbones.registry.available_audio`.
        audio_backbone_kwargs: its builder's settings.
        proj_dims: the projection heads' sizes (official R(2+1)D-18 on Kinetics: ``[128]``).
        num_negatives: memories drawn as negatives per sample (official 1024).
        memory_momentum: of the memory update (official 0.5).
        temperature: of the scores (official 0.07).
        memory_size: videos in the memory; None sizes it as the training set at setup.
        negatives: ``"memory"`` (the paper's: ``num_negatives`` memories per sample) or
            ``"batch"`` (the batch's other clips and sounds, no memory; see the module
            docstring).
        cross_weight, within_weight: the cross-modal (v2a, a2v) and within-modal (v2v, a2a)
            terms (official Cross: 1 and 0).
        audio_seconds, sample_rate: the audio window (official 2 s at 24 kHz).
        audio_volume_jitter: in training, each waveform is scaled by a factor uniform in
            ``1 +- audio_volume_jitter`` (`volume_jitter`; official 0.1); 0 turns it off.
        audio_offsync: in training, how far (seconds) the clip may lie outside its sound
            window, placed by the official rule (`AudioVisualClip`; official
            ``max_offsync_augm`` 0.5); None centres the window on the clip.
        n_fft, spectrogram_fps, n_mels: the log spectrogram (official 512, 100, None: 257
            linear bins).
        optimizer, lr, weight_decay, lr_schedule: official Adam, lr 2e-4, weight decay 1e-5,
            constant (its multistep schedule has gamma 1).
        **kwargs: the other settings of `VSSLTask` (backbone, probe, ...).

    Logged: ``xmodal_acc`` (progress bar), ``nce_v2a`` and ``nce_a2v`` in training.
    """

    video_keys = ("video",)
    progress_bar_logs = ("xmodal_acc",)

    def __init__(
        self,
        audio_backbone: str = "avid_conv2d_10",
        audio_backbone_kwargs: dict[str, Any] | None = None,
        proj_dims: Sequence[int] = (128,),
        num_negatives: int = 1024,
        memory_momentum: float = 0.5,
        temperature: float = 0.07,
        memory_size: int | None = None,
        negatives: str = "memory",
        cross_weight: float = 1.0,
        within_weight: float = 0.0,
        audio_seconds: float = 2.0,
        sample_rate: int = 24000,
        audio_volume_jitter: float = 0.1,
        audio_offsync: float | None = 0.5,
        n_fft: int = 512,
        spectrogram_fps: float = 100.0,
        n_mels: int | None = None,
        optimizer: str = "adam",
        lr: float = 2e-4,
        weight_decay: float = 1e-5,
        lr_schedule: str = "constant",
        **kwargs: Any,
    ):
        super().__init__(
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            **kwargs,
        )
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not 0.0 <= memory_momentum < 1.0:
            raise ValueError(f"memory_momentum must be in [0, 1), got {memory_momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if cross_weight < 0 or within_weight < 0 or cross_weight + within_weight <= 0:
            raise ValueError(
                f"cross_weight and within_weight must be >= 0, not both 0, got {cross_weight} "
                f"and {within_weight}"
            )
        if negatives not in ("memory", "batch"):
            raise ValueError(f"negatives must be 'memory' or 'batch', got {negatives!r}")
        if negatives == "batch" and within_weight > 0:
            raise ValueError(
                "within_weight needs negatives='memory': in a batch a clip's only within-modal "
                "positive is itself"
            )
        if not spectrogram_fps > 0:
            raise ValueError(f"spectrogram_fps must be positive, got {spectrogram_fps}")
        AudioVisualClip(  # checks the three
            audio_seconds=audio_seconds, sample_rate=sample_rate, offsync=audio_offsync
        )
        if not 0.0 <= audio_volume_jitter < 1.0:
            raise ValueError(f"audio_volume_jitter must be in [0, 1), got {audio_volume_jitter}")
        self.audio_backbone = build_audio(audio_backbone, **(audio_backbone_kwargs or {}))
        self.spectrogram = LogMelSpectrogram(
            sample_rate,
            n_fft,
            hop_length=max(1, round(sample_rate / spectrogram_fps)),
            n_mels=n_mels,
        )
        self.video_head = AVIDProjectionHead(self.backbone.out_dim, proj_dims)
        self.audio_head = AVIDProjectionHead(self.audio_backbone.out_dim, proj_dims)
        self.memory = InstanceMemory(memory_size or 0, list(proj_dims)[-1])
        self.register_buffer("partition", torch.tensor(-1.0))
        total = cross_weight + within_weight
        self.cross_weight, self.within_weight = cross_weight / total, within_weight / total
        self.num_negatives, self.memory_momentum = num_negatives, memory_momentum
        self.temperature = temperature
        self.audio_seconds, self.sample_rate = audio_seconds, sample_rate
        self.memory_size, self.negatives = memory_size, negatives
        self.audio_volume_jitter = audio_volume_jitter
        self.audio_offsync = audio_offsync

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """A clip and its sound: a random clip with the official window jitter in training, the
        centre clip with its centred sound otherwise."""
        return AudioVisualClip(
            spec.clip_len,
            spec.stride,
            self.audio_seconds,
            self.sample_rate,
            True,
            stage == "train",
            offsync=self.audio_offsync,
        )

    def setup(self, stage: str) -> None:
        """Sizes the memory as the training set (``memory_size`` None), or checks it fits
        (memory negatives only)."""
        trainer = self.attached_trainer()
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", {})
        train = datasets.get("train") if isinstance(datasets, dict) else None
        if train is None or self.negatives == "batch":
            return
        if self.memory_size is None and self.memory.size != len(train):
            self.memory.resize(len(train))
        elif self.memory.size < len(train):
            raise ValueError(
                f"AVID: memory_size {self.memory.size} is smaller than the training set "
                f"({len(train)} videos with audio); raise it or leave it unset"
            )

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The clips as every task's; the waveforms ``(B, C, N)`` (their volume jittered in
        training) to log spectrograms ``(B, C, F, T)``."""
        batch = super().augment_batch(batch)
        if "audio" in batch and batch["audio"].ndim == 3:
            audio = batch["audio"]
            if self.training:
                audio = volume_jitter(audio, self.audio_volume_jitter)
            batch["audio"] = self.spectrogram(audio)
        return batch

    # ---------------------------------------------------------------- loss
    def embed(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Video features and the unit embeddings of clips and spectrograms."""
        features = self.backbone(video)
        v = F.normalize(self.video_head(features), dim=1)
        a = F.normalize(self.audio_head(self.audio_backbone(audio)), dim=1)
        return features, v, a

    def _partition(self, exp_negative: Tensor) -> Tensor:
        """The NCE constant Z: set from the first training batch (all processes), then fixed."""
        if self.partition > 0:
            return self.partition
        mean = exp_negative.detach().mean()
        if self.world_size() > 1:
            mean = self.all_gather(mean).mean()
        self.partition.fill_(float(mean))
        return self.partition

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The memory NCE in training (``negatives="memory"``); the in-batch cross-modal
        InfoNCE in evaluation, and in training with ``negatives="batch"``."""
        features, v, a = self.embed(batch["video"], batch["audio"])
        with torch.no_grad():
            hits = (v @ a.T).argmax(dim=1) == torch.arange(len(v), device=v.device)
        logs: dict[str, Any] = {"xmodal_acc": hits.float().mean()}
        if stage != "train" or self.negatives == "batch":
            keys_v, keys_a, rank = v, a, 0
            if stage == "train" and self.world_size() > 1:
                rank = self.global_rank
                keys_v = self.all_gather(v, sync_grads=True).flatten(0, 1)
                keys_a = self.all_gather(a, sync_grads=True).flatten(0, 1)
            v2a = batch_nce(v, keys_a, self.temperature, rank)
            a2v = batch_nce(a, keys_v, self.temperature, rank)
            if stage == "train":
                logs.update(nce_v2a=v2a.detach(), nce_a2v=a2v.detach())
            return StepOutput(0.5 * (v2a + a2v), logs, features)
        index = batch["index"].long()
        if self.memory.size == 0 or int(index.max()) >= self.memory.size:
            raise ValueError(
                f"AVID: video index {int(index.max())} does not fit the memory of "
                f"{self.memory.size} videos (set memory_size, or train through a datamodule)"
            )
        tau = self.temperature
        with torch.no_grad():
            negative = self.memory.negatives(index.cpu(), self.num_negatives).to(v.device)
            mem_v, mem_a = self.memory.video, self.memory.audio
            pos_v, pos_a = mem_v[index], mem_a[index]
            neg_v, neg_a = mem_v[negative], mem_a[negative]
        scores = {
            "v2a": ((v * pos_a).sum(1) / tau, torch.einsum("bd,bkd->bk", v, neg_a) / tau),
            "a2v": ((a * pos_v).sum(1) / tau, torch.einsum("bd,bkd->bk", a, neg_v) / tau),
        }
        if self.within_weight > 0:
            scores["v2v"] = ((v * pos_v).sum(1) / tau, torch.einsum("bd,bkd->bk", v, neg_v) / tau)
            scores["a2a"] = ((a * pos_a).sum(1) / tau, torch.einsum("bd,bkd->bk", a, neg_a) / tau)
        z = self._partition(scores["v2a"][1].exp())
        loss = v.new_zeros(())
        for name, (pos, neg) in scores.items():
            term = nce_loss(pos, neg, z)
            weight = self.cross_weight if name in ("v2a", "a2v") else self.within_weight
            loss = loss + weight * term / 2
            logs[f"nce_{name}"] = term.detach()
        self._update_memory(index, v, a)
        return StepOutput(loss, logs, features)

    @torch.no_grad()
    def _update_memory(self, index: Tensor, video: Tensor, audio: Tensor) -> None:
        """The momentum update of the memories of the batch's videos, of every process."""
        if self.world_size() > 1:
            index = self.all_gather(index).flatten(0, 1)
            video = self.all_gather(video).flatten(0, 1)
            audio = self.all_gather(audio).flatten(0, 1)
        self.memory.update(index, video, audio, self.memory_momentum)
