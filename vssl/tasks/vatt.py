"""VATT-style video-audio contrastive learning with DropToken on transformers.

Akbari et al., "VATT: Transformers for Multimodal Self-Supervised Learning from Raw Video, Audio
and Text", NeurIPS 2021, https://arxiv.org/abs/2104.11178 (modality-specific backbones). vssl
trains the video and the audio branch of VATT; **text is out of scope**: vssl has no speech
recognition to give videos their text, so the video-text space, its MIL-NCE loss and the text
transformer are left out, and the loss is the video-audio NCE alone.

- Sampling (`vssl.tasks.avid.AudioVisualClip`): one clip of ``clip_len`` frames every ``stride``
  frames at a random start (the centre clip in evaluation) and ``audio_seconds`` of its sound
  centred on it (paper: 32 frames at 10 fps and 3.2 s of audio at 48 kHz, the same span).
  Videos without an audio stream are left out when the dataset is built (one logged count).
- Video: a video ViT (`vssl.backbones.vit`, the paper's 4x16x16 patches through
  ``backbone_kwargs: {tubelet_frames: 4}``). Audio: the raw waveform cut into 128-sample patches
  and a waveform transformer (`vssl.backbones.audio.WaveformTransformer`, ``vatt_audio_base``);
  in training each waveform gets Gaussian noise of 0.01 times its peak (``audio_noise``, as the
  official pre-training data pipeline).
- DropToken (`drop_tokens`): in training, each modality keeps a random ``1 - drop_rate`` of
  its tokens (paper: drop 50%), chosen after the position embeddings are added, so the kept
  tokens keep their positions; one subset for the whole batch as VATT's official code
  (``drop_per_sample: true`` draws one per sample); evaluation sees every token.
- Projections (`VideoAudioProjection`), the video-audio part of the paper's fine-and-coarse
  common space (after MMV: Alayrac et al., "Self-Supervised MultiModal Versatile Networks",
  NeurIPS 2020): video to the shared space ``S_va`` by Linear + BN + ReLU + Linear + BN, audio
  by one Linear layer (``S_va`` of 512 dimensions), as the official ``FACHead``. The coarse
  video-text space is text's and is left out.
- Loss (`video_audio_nce`): NCE between the L2-normalised video and audio embeddings of the
  same clip, the other clips of the (global) batch as negatives, temperature 0.07, with the
  video-to-audio and audio-to-video candidates in one denominator (the official code's NCE).
  Under DDP the embeddings of every process are gathered with gradients, as the paper's
  negatives are the whole batch's.
- Pooling: the mean of the last block's tokens and a LayerNorm (the ViTs of vssl), where VATT
  reads a learned aggregation token; positions are the ViT's sinusoid table for video (VATT:
  learnable factorised ones) and learnable for audio. `docs/fidelity.md` lists every setting
  against the official code.

``xmodal_acc`` (logged in every stage) is the share of clips whose own audio is the nearest of
the batch's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.backbones.registry import build_audio
from vssl.data.sampling import ClipSampler, ClipSpec
from vssl.tasks.avid import AudioVisualClip
from vssl.tasks.base import StepOutput, VSSLTask

__all__ = [
    "VATT",
    "VideoAudioProjection",
    "drop_tokens",
    "kept_tokens",
    "video_audio_nce",
    "waveform_noise",
]

_TOKEN_METHODS = ("embed", "encode", "pool")


def kept_tokens(num_tokens: int, drop_rate: float) -> int:
    """Tokens that DropToken keeps of ``num_tokens``: ``round(num_tokens * (1 - drop_rate))``,
    at least one."""
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    return max(1, round(num_tokens * (1.0 - drop_rate)))


def drop_tokens(
    tokens: Tensor,
    drop_rate: float,
    generator: torch.Generator | None = None,
    per_sample: bool = False,
) -> Tensor:
    """DropToken: ``(B, N, D)`` tokens -> ``(B, kept_tokens(N, drop_rate), D)``, a uniformly
    random subset in their original order: one subset for the whole batch (VATT's official code
    draws one permutation per step), or one per sample with ``per_sample``."""
    if tokens.ndim != 3:
        raise ValueError(f"drop_tokens expects tokens shaped (B, N, D), got {tuple(tokens.shape)}")
    b, n, d = tokens.shape
    keep = kept_tokens(n, drop_rate)
    if keep == n:
        return tokens
    device = generator.device if generator is not None else tokens.device
    noise = torch.rand(b if per_sample else 1, n, generator=generator, device=device)
    index = noise.to(tokens.device).argsort(dim=1)[:, :keep].sort(dim=1).values
    return tokens.gather(1, index[..., None].expand(b, keep, d))


def waveform_noise(
    waveform: Tensor, gamma: float, generator: torch.Generator | None = None
) -> Tensor:
    """VATT's waveform augmentation: Gaussian noise of std ``gamma`` times each waveform's
    largest absolute sample, added to waveforms ``(B, C, N)``."""
    if gamma < 0:
        raise ValueError(f"the noise factor must be non-negative, got {gamma}")
    if waveform.ndim != 3:
        raise ValueError(f"waveform_noise expects (B, C, N) waveforms, got {tuple(waveform.shape)}")
    if gamma == 0:
        return waveform
    device = generator.device if generator is not None else waveform.device
    noise = torch.randn(waveform.shape, generator=generator, device=device).to(waveform)
    return waveform + noise * gamma * waveform.abs().amax(dim=(1, 2), keepdim=True)


def video_audio_nce(
    video: Tensor,
    audio: Tensor,
    temperature: float = 0.07,
    gather: Callable[[Tensor], Tensor] | None = None,
    rank: int = 0,
) -> Tensor:
    """VATT's video-audio NCE of this process's embeddings ``(n, D)`` (row i: clip i).

    On L2-normalised embeddings, for each clip ``i``: ``-log(exp(v_i . a_i / t) / (sum_j
    exp(v_i . a_j / t) + sum_j exp(v_j . a_i / t)))``, ``j`` over every clip of the (global)
    batch: one softmax over the clip's audio candidates and the audio's clip candidates together
    (the positive is in both halves of the denominator), averaged over the clips. This is the
    loss of the official code's pre-training model (its asymmetric NCE, after MMV). ``gather``
    maps a local ``(n, D)`` tensor to the global ``(W * n, D)`` one (rank-major,
    differentiable), ``rank`` places this process's rows in it; None is one process.
    """
    if video.ndim != 2 or video.shape != audio.shape:
        raise ValueError(
            f"video_audio_nce needs video and audio embeddings of one shape (n, D), got "
            f"{tuple(video.shape)} and {tuple(audio.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    v, a = F.normalize(video, dim=1), F.normalize(audio, dim=1)
    v_all = gather(v) if gather is not None else v
    a_all = gather(a) if gather is not None else a
    logits = torch.cat([v @ a_all.T, a @ v_all.T], dim=1) / temperature
    targets = rank * len(v) + torch.arange(len(v), device=v.device)
    return F.cross_entropy(logits, targets)


class VideoAudioProjection(nn.Module):
    """The video-audio common space of VATT's fine-and-coarse (FAC) projection.

    ``video``: Linear(video_dim, hidden) + BN + ReLU + Linear(hidden, dim) + BN, the Linear
    layers without bias (batch norm follows each); ``audio``: one Linear(audio_dim, dim) with
    bias and no batch norm. This is the official code's ``FACHead`` up to the video-audio space.
    """

    def __init__(self, video_dim: int, audio_dim: int, dim: int = 512, hidden: int = 512) -> None:
        super().__init__()
        if min(video_dim, audio_dim, dim, hidden) < 1:
            raise ValueError(
                f"projection sizes must be positive, got video {video_dim}, audio {audio_dim}, "
                f"dim {dim}, hidden {hidden}"
            )
        self.video = nn.Sequential(
            nn.Linear(video_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, bias=False),
            nn.BatchNorm1d(dim),
        )
        self.audio = nn.Linear(audio_dim, dim)


class VATT(VSSLTask):
    """VATT's video-audio contrastive learning (see the module docstring; no text).

    Args:
        backbone: a video transformer of `vssl.backbones` (``vit_*``: it needs ``embed``,
            ``encode`` and ``pool``); the paper's ViT-Base on 4x16x16 patches is ``vit_b_16``
            with ``backbone_kwargs: {tubelet_frames: 4}``.
        audio_backbone: a waveform transformer of the audio registry (``vatt_audio_base``,
            ``vatt_audio_tiny``).
        audio_backbone_kwargs: its builder's settings.
        drop_rate: the share of each modality's tokens DropToken removes in training (paper
            0.5); 0 keeps them all.
        drop_per_sample: draw one random subset of tokens per sample; False (the default)
            draws one for the whole batch, as the official code.
        proj_dim, proj_hidden: the size of the video-audio space and of the video head's hidden
            layer (paper 512).
        temperature: of the NCE (paper 0.07).
        audio_noise: in training, Gaussian noise of this times each waveform's peak is added
            to it (`waveform_noise`; official 0.01); 0 turns it off.
        audio_seconds, sample_rate: the audio window (paper 3.2 s at 48 kHz); its sample count
            must be a multiple of the audio backbone's patch size.
        optimizer, lr, weight_decay, warmup_epochs, min_lr_ratio: the official Adam at lr
            1e-4 without weight decay, a half cosine from 1e-4 to 5e-5 after the warm-up (the
            official schedule); warm-up is set per config (official: 5k of 500k steps).
        **kwargs: the other settings of `VSSLTask` (probe, augment, ...).

    Text, the video-text space and MIL-NCE are not part of vssl's VATT (no ASR transcripts).
    Logged: ``xmodal_acc`` (progress bar) in every stage.
    """

    video_keys = ("video",)
    progress_bar_logs = ("xmodal_acc",)

    def __init__(
        self,
        backbone: str = "vit_b_16",
        audio_backbone: str = "vatt_audio_base",
        audio_backbone_kwargs: dict[str, Any] | None = None,
        drop_rate: float = 0.5,
        drop_per_sample: bool = False,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        temperature: float = 0.07,
        audio_noise: float = 0.01,
        audio_seconds: float = 3.2,
        sample_rate: int = 48000,
        optimizer: str = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        min_lr_ratio: float = 0.5,
        **kwargs: Any,
    ):
        super().__init__(
            backbone=backbone,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            min_lr_ratio=min_lr_ratio,
            **kwargs,
        )
        kept_tokens(1, drop_rate)  # checks the rate
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if audio_noise < 0:
            raise ValueError(f"audio_noise must be non-negative, got {audio_noise}")
        AudioVisualClip(audio_seconds=audio_seconds, sample_rate=sample_rate)  # checks the two
        if not all(hasattr(self.backbone, m) for m in _TOKEN_METHODS):
            raise ValueError(
                f"VATT needs a video transformer backbone (one with embed, encode and pool, "
                f"e.g. vit_b_16), got {backbone!r} ({type(self.backbone).__name__})"
            )
        self.audio_backbone = build_audio(audio_backbone, **(audio_backbone_kwargs or {}))
        if getattr(self.audio_backbone, "input_kind", None) != "waveform" or not all(
            hasattr(self.audio_backbone, m) for m in _TOKEN_METHODS
        ):
            raise ValueError(
                f"VATT needs a waveform transformer audio backbone (e.g. vatt_audio_base), got "
                f"{audio_backbone!r} ({type(self.audio_backbone).__name__})"
            )
        samples = round(audio_seconds * sample_rate)
        patch = self.audio_backbone.patch_size
        if samples % patch:
            raise ValueError(
                f"VATT: {audio_seconds} s at {sample_rate} Hz is {samples} samples, not a multiple "
                f"of the audio backbone's patch size {patch}; pick audio_seconds x sample_rate "
                f"divisible by it"
            )
        self.audio_backbone.num_tokens(samples)  # fits the position table
        self.head = VideoAudioProjection(
            self.backbone.out_dim, self.audio_backbone.out_dim, proj_dim, proj_hidden
        )
        self.drop_rate, self.temperature = drop_rate, temperature
        self.drop_per_sample, self.audio_noise = drop_per_sample, audio_noise
        self.audio_seconds, self.sample_rate = audio_seconds, sample_rate

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """A clip and its sound: a random clip in training, the centre clip otherwise."""
        return AudioVisualClip(
            spec.clip_len, spec.stride, self.audio_seconds, self.sample_rate, True, stage == "train"
        )

    # ---------------------------------------------------------------- encoders
    def _encode(self, backbone: nn.Module, x: Tensor, drop: bool) -> Tensor:
        tokens = backbone.embed(x)
        if drop and self.drop_rate > 0:
            tokens = drop_tokens(tokens, self.drop_rate, per_sample=self.drop_per_sample)
        return backbone.pool(backbone.encode(tokens))

    def video_features(self, video: Tensor, drop: bool = False) -> Tensor:
        """Pooled video features ``(B, D)``; ``drop`` applies DropToken."""
        return self._encode(self.backbone, video, drop)

    def audio_features(self, waveform: Tensor, drop: bool = False) -> Tensor:
        """Pooled audio features ``(B, D)`` of waveforms ``(B, 1, N)``; ``drop`` applies
        DropToken."""
        return self._encode(self.audio_backbone, waveform, drop)

    def embed(self, video: Tensor, audio: Tensor, drop: bool = False) -> tuple[Tensor, ...]:
        """Video features and the unit embeddings of clips and waveforms in the common space."""
        features = self.video_features(video, drop)
        v = F.normalize(self.head.video(features), dim=1)
        a = F.normalize(self.head.audio(self.audio_features(audio, drop)), dim=1)
        return features, v, a

    # ---------------------------------------------------------------- loss
    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The video-audio NCE; DropToken and the waveform noise in training only."""
        train = stage == "train"
        audio = waveform_noise(batch["audio"], self.audio_noise) if train else batch["audio"]
        features, v, a = self.embed(batch["video"], audio, drop=train)
        gather, rank = None, 0
        if train and self.world_size() > 1:
            rank = self.global_rank

            def gather(t: Tensor) -> Tensor:
                return self.all_gather(t, sync_grads=True).flatten(0, 1)

        loss = video_audio_nce(v, a, self.temperature, gather, rank)
        with torch.no_grad():
            hits = (v @ a.T).argmax(dim=1) == torch.arange(len(v), device=v.device)
        return StepOutput(loss, {"xmodal_acc": hits.float().mean()}, features)
