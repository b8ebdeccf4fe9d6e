"""Audio of a video's time span, decoded with PyAV, and log-mel spectrograms computed with torch.

A clip sampler asks for audio with an `~vssl.data.sampling.AudioSpan` view (the frames it
covers, its length in seconds, the sample rate, mono or stereo); the dataset reads the frames
first and then the audio with :func:`read_audio`, from its own demuxer of the same file, so the
video path stays as it is when no audio is asked for (no audio stream is opened, no audio packet
demuxed).

Alignment: frame ``i`` of a video is shown at ``t_0 + i / fps``, where ``t_0`` is the
presentation time of its first frame (`VideoReader.start_time`). The audio window of a span is
placed on the same clock: output sample ``j`` of a window starting at ``s`` seconds after frame 0
holds the audio at ``t_0 + s + j / rate``. The decoder's first frame after the seek fixes the
position of every sample after it (decoded audio is contiguous), so the placement is exact to
the sample in containers whose audio timestamps count samples (MP4, MOV) and exact to the
container's time base elsewhere (Matroska stores milliseconds). Audio outside the stream (before
its start, after its end) is silence (zeros). Resampling and down-mixing (5.1 to stereo or mono)
are FFmpeg's, through PyAV's ``AudioResampler``.

The spectrogram (`LogMelSpectrogram`) runs on the device on a batch of waveforms: ``torch.stft``
with a Hann window and, optionally, a triangular mel filter bank (`mel_filter_bank`, the HTK mel
scale), then a log.
"""

from __future__ import annotations

import fractions
import math
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor, nn

from vssl.data.reader import VideoDecodeError

__all__ = [
    "LogMelSpectrogram",
    "hz_to_mel",
    "mel_filter_bank",
    "mel_to_hz",
    "probe_audio",
    "read_audio",
    "write_video_with_audio",
]

# Seek this far before the wanted window: an AAC (MDCT) frame decoded right after a seek lacks
# the overlap of the frame before it; decoding a few frames ahead of the window fills it.
_SEEK_MARGIN = 0.1


def probe_audio(path: str | Path) -> tuple[int, int] | None:
    """``(sample_rate, channels)`` of the file's best audio stream, None when it has none.

    Reads the container's header only (no decoding); a file that cannot be opened raises
    `VideoDecodeError` naming it.
    """
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoDecodeError(path, f"cannot open to look for audio: {exc}") from None
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.best("audio") or container.streams.audio[0]
        context = stream.codec_context
        return int(context.sample_rate or stream.rate or 0), int(context.channels or 0)


def _video_origin(container: av.container.InputContainer) -> float:
    """Presentation time of the video's first frame as the container states it (0 if unknown)."""
    if not container.streams.video:
        return 0.0
    stream = container.streams.best("video") or container.streams.video[0]
    if stream.start_time is None or not stream.time_base:
        return 0.0
    return float(stream.start_time * stream.time_base)


def read_audio(
    path: str | Path,
    start: float,
    num_samples: int,
    sample_rate: int,
    mono: bool = True,
    video_start: float | None = None,
    timeout: float | None = None,
) -> Tensor:
    """``num_samples`` of audio from ``start`` seconds after the video's first frame: float32
    ``(C, num_samples)`` at the decoder's scale (full scale 1; FFmpeg's down-mix of 5.1 adds
    channels, so it can exceed 1), C = 1 (``mono``) or 2 (stereo; mono files are duplicated,
    5.1 is down-mixed), resampled to ``sample_rate``.

    ``video_start`` is the presentation time of frame 0 in seconds (the reader's
    `~vssl.data.reader.VideoReader.start_time`); None takes the video stream's start time from
    the container. Raises `VideoDecodeError` naming the file when it has no audio stream or
    cannot be read.
    """
    if num_samples < 0 or sample_rate <= 0:
        raise ValueError(
            f"{path}: num_samples must be >= 0 and sample_rate positive, got {num_samples} and "
            f"{sample_rate}"
        )
    channels = 1 if mono else 2
    out = np.zeros((channels, num_samples), dtype=np.float32)
    try:
        container = av.open(str(path), metadata_errors="ignore", timeout=timeout)
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoDecodeError(path, f"cannot open for audio: {exc}") from None
    with container:
        if not container.streams.audio:
            raise VideoDecodeError(path, "no audio stream")
        stream = container.streams.best("audio") or container.streams.audio[0]
        origin = _video_origin(container) if video_start is None else video_start
        first = round((origin + start) * sample_rate)  # absolute sample index of out[:, 0]
        if num_samples == 0:
            return torch.from_numpy(out)
        target = first / sample_rate - _SEEK_MARGIN
        begin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        if target > begin and stream.time_base:
            try:
                container.seek(math.floor(target / stream.time_base), stream=stream)
            except av.error.FFmpegError:
                container.seek(0)
        resampler = av.AudioResampler(
            format="fltp", layout="mono" if mono else "stereo", rate=sample_rate
        )
        position: int | None = None  # absolute sample index of the next resampled sample
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    continue
                for frame in frames:
                    if position is None:
                        pts = frame.pts if frame.pts is not None else 0
                        position = round(float(pts * frame.time_base) * sample_rate)
                    for piece in resampler.resample(frame):
                        position = _place(piece, position, first, out)
                if position is not None and position >= first + num_samples:
                    return torch.from_numpy(out)
            if position is not None:
                for piece in resampler.resample(None):
                    position = _place(piece, position, first, out)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(path, f"audio could not be decoded: {exc}") from None
    return torch.from_numpy(out)


def _place(frame: av.AudioFrame, position: int, first: int, out: np.ndarray) -> int:
    """Copy the part of ``frame`` (starting at absolute sample ``position``) that falls in the
    window ``out`` (starting at ``first``); return the position after the frame."""
    data = frame.to_ndarray()
    n = data.shape[1]
    lo, hi = max(position, first), min(position + n, first + out.shape[1])
    if hi > lo:
        out[:, lo - first : hi - first] = data[:, lo - position : hi - position]
    return position + n


def write_video_with_audio(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray,
    fps: int = 25,
    sample_rate: int = 16000,
    layout: str | None = None,
    codec: str = "libx264",
    crf: int = 18,
    audio_codec: str = "aac",
) -> Path:
    """Encode uint8 RGB ``frames`` ``(T, H, W, 3)`` and float ``audio`` ``(C, N)`` in [-1, 1]
    into ``path``: the video as `vssl.data.encode.write_video` writes it, the audio as a
    ``layout`` track (None: ``mono``, ``stereo`` or ``5.1`` by C) in ``audio_codec``.

    Audio sample ``n`` is meant to sound at ``n / sample_rate`` seconds, frame ``i`` is shown at
    ``i / fps``; the test files and the synthetic dataset's sound are written with it.
    """
    path = Path(path)
    frames, audio = np.asarray(frames), np.asarray(audio, dtype=np.float32)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    if audio.ndim != 2:
        raise ValueError(f"{path}: audio must be (channels, samples), got shape {audio.shape}")
    layout = layout or {1: "mono", 2: "stereo", 6: "5.1"}.get(audio.shape[0])
    if layout is None or av.AudioLayout(layout).nb_channels != audio.shape[0]:
        raise ValueError(f"{path}: no layout {layout!r} for {audio.shape[0]} audio channels")
    _, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.codec_context.thread_count = 1  # deterministic x264, as write_video
        if codec == "libx264":
            video.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        sound = container.add_stream(audio_codec, rate=sample_rate, layout=layout)
        sound_format = sound.codec_context.format.name
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        chunk = sound.codec_context.frame_size or 1024
        base = fractions.Fraction(1, sample_rate)
        for s in range(0, audio.shape[1], chunk):
            piece = np.ascontiguousarray(np.clip(audio[:, s : s + chunk], -1.0, 1.0))
            if sound_format == "s16":
                piece = np.ascontiguousarray(
                    (piece.T * 32767).round().astype(np.int16).reshape(1, -1)
                )
                frame = av.AudioFrame.from_ndarray(piece, format="s16", layout=layout)
            else:
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, s, base
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode(None):
            container.mux(packet)
    return path


def hz_to_mel(hz: Tensor) -> Tensor:
    """The HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """The inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filter_bank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular mel filters ``(n_freqs, n_mels)`` over the ``n_freqs`` STFT bins of
    ``0 .. sample_rate / 2``: filter ``m`` rises from mel point ``m`` to ``m + 1`` and falls to
    ``m + 2``, the ``n_mels + 2`` points evenly spaced in mel from ``f_min`` to ``f_max``
    (default ``sample_rate / 2``); unnormalised, peak 1 (torchaudio's ``melscale_fbanks`` with
    ``norm=None, mel_scale="htk"``)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1 or not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"mel_filter_bank needs n_freqs >= 2, n_mels >= 1 and 0 <= f_min < f_max <= "
            f"sample_rate / 2, got {n_freqs}, {n_mels}, f_min={f_min}, f_max={f_max}"
        )
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min))), float(hz_to_mel(torch.tensor(f_max))), n_mels + 2
    )
    points = mel_to_hz(mels.double())
    left, centre, right = points[:-2], points[1:-1], points[2:]
    up = (freqs[:, None] - left) / (centre - left)
    down = (right - freqs[:, None]) / (right - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class LogMelSpectrogram(nn.Module):
    """Waveforms ``(B, C, N)`` (or ``(B, N)``) to log spectrograms ``(B, C, F, T)`` on the device.

    ``torch.stft`` with a periodic Hann window of ``win_length`` (default ``n_fft``), hop
    ``hop_length`` and centred frames; the power spectrum ``|X|^2``, mapped through
    `mel_filter_bank` when ``n_mels`` is set (F = ``n_mels``; None keeps the ``n_fft // 2 + 1``
    linear bins, as AVID's log spectrograms), then ``log(power + eps)``.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int = 512,
        hop_length: int | None = None,
        win_length: int | None = None,
        n_mels: int | None = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if n_fft < 2 or sample_rate <= 0 or eps <= 0:
            raise ValueError(
                f"LogMelSpectrogram needs n_fft >= 2, a positive sample_rate and eps, got "
                f"{n_fft}, {sample_rate}, {eps}"
            )
        self.sample_rate, self.n_fft = sample_rate, n_fft
        self.win_length = win_length or n_fft
        self.hop_length = hop_length or self.win_length // 4
        self.eps = eps
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        bank = (
            mel_filter_bank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max) if n_mels else None
        )
        self.register_buffer("mel", bank, persistent=False)

    @property
    def num_bins(self) -> int:
        """F: the frequency size of the output."""
        return self.mel.shape[1] if self.mel is not None else self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """T: spectrogram frames of a waveform of ``num_samples`` (centred STFT)."""
        return num_samples // self.hop_length + 1

    def forward(self, wave: Tensor) -> Tensor:
        if wave.ndim == 2:
            wave = wave.unsqueeze(1)
        if wave.ndim != 3:
            raise ValueError(f"expected waveforms (B, C, N) or (B, N), got {tuple(wave.shape)}")
        b, c, n = wave.shape
        spec = torch.stft(
            wave.reshape(b * c, n).float(),
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (B*C, F, T)
        if self.mel is not None:
            power = torch.einsum("bft,fm->bmt", power, self.mel)
        return torch.log(power + self.eps).reshape(b, c, power.shape[1], power.shape[2])
