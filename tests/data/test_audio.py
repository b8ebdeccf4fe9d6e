"""Audio in the data pipeline: alignment to the frames, files without sound, channel layouts
and rates, the mel filter bank, the audio backbones and the synthetic sound track."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vssl.backbones import available
from vssl.backbones.audio import AudioBackbone
from vssl.backbones.registry import UnknownBackboneError, available_audio, build_audio
from vssl.data.audio import (
    LogMelSpectrogram,
    mel_filter_bank,
    probe_audio,
    read_audio,
    write_video_with_audio,
)
from vssl.data.dataset import VideoDataset
from vssl.data.encode import write_video
from vssl.data.index import VideoIndex, probe_video
from vssl.data.layouts import VideoItem
from vssl.data.reader import VideoDecodeError
from vssl.data.sampling import AudioSpan, ClipSampler

FPS = 25
FRAMES = 50
CLICKS = (10, 30)  # frames at which the test files click


def _clicks(rate: int, channels: int) -> np.ndarray:
    """Silence with a one-sample click at the time of each frame of CLICKS."""
    audio = np.zeros((channels, FRAMES * rate // FPS), np.float32)
    for frame in CLICKS:
        audio[:, frame * rate // FPS] = 0.9
    return audio


def _frames() -> np.ndarray:
    return np.zeros((FRAMES, 32, 32, 3), np.uint8)


@pytest.fixture(scope="module")
def clicks_48k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "clicks.mp4"
    return write_video_with_audio(path, _frames(), _clicks(48000, 1), fps=FPS, sample_rate=48000)


@pytest.fixture(scope="module")
def silent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("silent") / "silent.mp4", _frames(), fps=FPS)


def test_a_click_at_a_frame_is_the_first_sample_of_that_frames_window(clicks_48k: Path) -> None:
    for rate in (16000, 48000):
        # the window starting at frame 10 starts with its click, the one at frame 9 has it
        # one frame (rate / FPS samples) in
        at_10 = read_audio(clicks_48k, 10 / FPS, rate // FPS, rate)[0]
        assert int(at_10.abs().argmax()) == 0 and float(at_10.abs().max()) > 0.2
        at_9 = read_audio(clicks_48k, 9 / FPS, 3 * rate // FPS, rate)[0]
        assert int(at_9.abs().argmax()) == rate // FPS
        at_29 = read_audio(clicks_48k, 29.5 / FPS, rate // FPS, rate)[0]
        assert int(at_29.abs().argmax()) == rate // FPS // 2


def test_outside_the_stream_is_silence(clicks_48k: Path) -> None:
    before = read_audio(clicks_48k, -1.0, 16000 + 16000 * 10 // FPS + 100, 16000)[0]
    assert before[:16000].abs().max() == 0
    assert int(before.abs().argmax()) == 16000 + 16000 * 10 // FPS  # the click at frame 10
    after = read_audio(clicks_48k, FRAMES / FPS + 0.5, 800, 16000)
    assert after.shape == (1, 800) and after.abs().max() == 0


@dataclass
class _ClipAndSound(ClipSampler):
    """Frames 10..13 and their sound (4 frames), or ``seconds`` centred on them."""

    seconds: float = 4 / FPS
    mono: bool = True
    needs_audio = True

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict:
        span = AudioSpan(10, 14, self.seconds, 16000, self.mono)
        return {"video": np.arange(10, 14), "sound": span}


def test_dataset_puts_the_spans_sound_next_to_its_frames(clicks_48k: Path) -> None:
    info = probe_video(clicks_48k)
    assert info.has_audio is True
    dataset = VideoDataset([VideoItem(clicks_48k, 3)], [info], _ClipAndSound())
    sample = dataset.load(0, np.random.default_rng(0))
    assert sample["video"].shape == (4, 3, 32, 32)
    assert sample["sound"].shape == (1, 4 * 16000 // FPS) and sample["sound"].dtype == torch.float32
    assert int(sample["sound"][0].abs().argmax()) == 0  # frame 10's click
    wide = VideoDataset([VideoItem(clicks_48k, 3)], [info], _ClipAndSound(seconds=1.0, mono=False))
    sound = wide.load(0, np.random.default_rng(0))["sound"]
    # 1 s centred on frames 10..13 (0.40..0.56 s) starts at -0.02 s after frame 10
    assert sound.shape == (2, 16000)
    assert int(sound[0].abs().argmax()) == 16000 // 2 - 2 * 16000 // FPS


def test_offsync_window_by_hand() -> None:
    # frames 10..13 at 25 fps: 0.40..0.56 s; a 1 s window may start from 0.56 - 1 - 0.5 =
    # -0.94 s to 0.40 + 0.5 = 0.90 s, cut to 0 .. 2 - 1 s inside a 50-frame (2 s) video
    def start(draw: float, frames: int | None = 50) -> float:
        return AudioSpan(10, 14, 1.0, offsync=0.5, draw=draw, video_frames=frames).start_time(FPS)

    assert start(0.0) == pytest.approx(0.0) and start(1.0) == pytest.approx(0.9)
    assert start(0.5) == pytest.approx(0.45)
    assert start(0.0, None) == pytest.approx(-0.94)  # no video length: not cut
    assert start(1.0, 40) == pytest.approx(0.6)  # a 1.6 s video: the window ends by 1.6 s
    assert start(0.0, 20) == pytest.approx(-0.94)  # a video shorter than the window: not cut
    # offsync 0: the clip anywhere inside the window (AVID's evaluation loader)
    assert AudioSpan(10, 14, 1.0, offsync=0.0, draw=0.0).start_time(FPS) == pytest.approx(-0.44)
    assert AudioSpan(10, 14, 1.0).start_time(FPS) == pytest.approx(0.48 - 0.5)  # centred
    with pytest.raises(ValueError, match="offsync must be >= 0"):
        AudioSpan(10, 14, 1.0, offsync=-0.1)
    with pytest.raises(ValueError, match="draw must be in"):
        AudioSpan(10, 14, 1.0, offsync=0.5, draw=1.5)


@dataclass
class _OffsyncSound(ClipSampler):
    """Frames 10..13 and a 1 s window placed by the offsync rule at ``draw``."""

    draw: float = 0.0
    needs_audio = True

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict:
        span = AudioSpan(10, 14, 1.0, 16000, offsync=0.5, draw=self.draw, video_frames=num_frames)
        return {"video": np.arange(10, 14), "sound": span}


def test_offsync_window_is_exact_to_the_sample(clicks_48k: Path) -> None:
    info = probe_video(clicks_48k)
    # draw 0: the window starts at 0 s, the click of frame 10 (0.4 s) is sample 6400 and the
    # one of frame 30 (1.2 s) is past its end
    first = VideoDataset([VideoItem(clicks_48k, 0)], [info], _OffsyncSound(0.0))
    sound = first.load(0, np.random.default_rng(0))["sound"][0]
    assert int(sound.abs().argmax()) == 6400 and float(sound.abs().max()) > 0.2
    # draw 1: the window starts at 0.9 s, frame 30's click is at (1.2 - 0.9) s = sample 4800
    last = VideoDataset([VideoItem(clicks_48k, 0)], [info], _OffsyncSound(1.0))
    sound = last.load(0, np.random.default_rng(0))["sound"][0]
    assert int(sound.abs().argmax()) == 4800 and float(sound.abs().max()) > 0.2


@pytest.mark.parametrize("layout", ["mono", "stereo", "5.1"])
@pytest.mark.parametrize("rate", [44100, 48000])
def test_layouts_and_rates(tmp_path: Path, layout: str, rate: int) -> None:
    channels = av.AudioLayout(layout).nb_channels
    path = write_video_with_audio(
        tmp_path / "v.mp4", _frames(), _clicks(rate, channels), fps=FPS, sample_rate=rate
    )
    assert probe_audio(path) == (rate, channels)
    for mono in (True, False):
        sound = read_audio(path, 30 / FPS, 8000, 16000, mono=mono)
        assert sound.shape == (1 if mono else 2, 8000)
        # the click (band-limited by AAC and the resampler) at the first sample, nothing after it
        assert int(sound[0].abs().argmax()) == 0 and float(sound.abs().max()) > 0.1
        assert float(sound[:, 50:].abs().max()) < float(sound.abs().max()) / 5
        torch.testing.assert_close(sound[0], sound[-1])  # every channel clicks alike


def test_a_video_without_sound(silent: Path, clicks_48k: Path, caplog) -> None:
    assert probe_audio(silent) is None
    with pytest.raises(VideoDecodeError, match=rf"{silent}: no audio stream"):
        read_audio(silent, 0.0, 100, 16000)
    index = VideoIndex.build(
        [silent, clicks_48k], workers=1, progress=False, cache_dir=silent.parent
    )
    assert [i.has_audio for i in index] == [False, True]
    assert [i.path for i in index.silent] == [str(silent)]
    infos = [probe_video(silent), probe_video(clicks_48k)]
    items = [VideoItem(silent, 0), VideoItem(clicks_48k, 1)]
    with caplog.at_level(logging.WARNING, logger="vssl"):
        dataset = VideoDataset(items, infos, _ClipAndSound())
    assert len(dataset) == 1 and dataset.path(0) == str(clicks_48k) and dataset.label(0) == 1
    warnings = [r.getMessage() for r in caplog.records if "no audio stream" in r.getMessage()]
    assert warnings == ["1 of 2 videos have no audio stream and are left out: the task needs audio"]
    with pytest.raises(ValueError, match=r"none of the 1 videos has an audio stream .*silent.mp4"):
        VideoDataset(items[:1], infos[:1], _ClipAndSound())
    # a sampler without audio keeps every video and never looks for sound
    dataset = VideoDataset(items, infos, _ClipAndSound.__mro__[1]())
    assert len(dataset) == 2


def test_mel_filter_bank_by_hand() -> None:
    # 5 bins 0, 1000, .., 4000 Hz; one filter from 0 to 4000 Hz peaking at the mel midpoint
    top = 2595 * math.log10(1 + 4000 / 700)  # 2146.06 mel
    peak = 700 * (10 ** (top / 2 / 2595) - 1)  # 1113.8 Hz
    expected = [0.0, 1000 / peak, (4000 - 2000) / (4000 - peak), 1000 / (4000 - peak), 0.0]
    bank = mel_filter_bank(5, 1, 8000)
    assert bank.shape == (5, 1)
    torch.testing.assert_close(bank[:, 0], torch.tensor(expected), atol=1e-6, rtol=0)
    assert abs(peak - 1113.8) < 0.1
    # two filters share edges: each bin's weights of neighbouring filters sum to 1 between peaks
    two = mel_filter_bank(257, 2, 16000)
    points = [
        700 * (10 ** (m / 2595) - 1) for m in np.linspace(0, 2595 * math.log10(1 + 8000 / 700), 4)
    ]
    between = (torch.linspace(0, 8000, 257) > points[1]) & (
        torch.linspace(0, 8000, 257) < points[2]
    )
    torch.testing.assert_close(two[between].sum(1), torch.ones(int(between.sum())))
    with pytest.raises(ValueError, match="f_max"):
        mel_filter_bank(5, 1, 8000, f_max=5000)


def test_log_spectrogram_of_a_tone_and_of_silence() -> None:
    spec = LogMelSpectrogram(8000, n_fft=256, hop_length=80, n_mels=None, eps=1e-6)
    t = torch.arange(8000) / 8000
    tone = torch.sin(2 * math.pi * 1000 * t)  # bin 1000 / (8000 / 256) = 32
    out = spec(torch.stack([tone, torch.zeros(8000)])[:, None])
    assert out.shape == (2, 1, 129, 8000 // 80 + 1) and spec.num_bins == 129
    assert spec.num_frames(8000) == 101
    assert (out[0, 0, :, 50].argmax() == 32).item()
    # |X| of a unit sine at its bin is sum(hann) / 2 = 64: log(64^2)
    assert abs(float(out[0, 0, 32, 50]) - math.log(64**2)) < 1e-3
    torch.testing.assert_close(out[1], torch.full_like(out[1], math.log(1e-6)))
    mel = LogMelSpectrogram(8000, n_fft=256, hop_length=80, n_mels=16)
    assert mel(tone[None]).shape == (1, 1, 16, 101) and mel.num_bins == 16
    with pytest.raises(ValueError, match=r"\(B, C, N\)"):
        spec(torch.zeros(1, 1, 1, 100))


# name -> (out_dim, F -> F', the same for T)
AUDIO_ARCH = {
    "audio_resnet18": (512, lambda n: -(-n // 32)),
    "avid_conv2d_10": (512, lambda n: -(-n // 16)),
    "audio_tiny": (64, lambda n: -(-n // 8)),
}


def test_audio_backbones_are_registered_apart_from_the_video_ones() -> None:
    # and the waveform transformers: tests/backbones/test_audio_transformer.py
    assert available_audio() == sorted([*AUDIO_ARCH, "vatt_audio_base", "vatt_audio_tiny"])
    assert not set(AUDIO_ARCH) & set(available())
    with pytest.raises(UnknownBackboneError, match="Did you mean 'audio_tiny'"):
        build_audio("audio_tiyn")
    with pytest.raises(TypeError, match="audio backbone 'audio_tiny'"):
        build_audio("audio_tiny", depth=3)


@pytest.mark.parametrize("name", sorted(AUDIO_ARCH))
def test_audio_backbone_shapes_on_meta(name: str) -> None:
    out_dim, shrink = AUDIO_ARCH[name]
    for channels in (1, 2):
        with torch.device("meta"):
            model = build_audio(name, in_channels=channels).eval()
        assert isinstance(model, AudioBackbone) and model.out_dim == out_dim
        for f, t in ((64, 101), (257, 201)):
            x = torch.empty(2, channels, f, t, device="meta")
            assert model.forward_features(x).shape == (2, out_dim, shrink(f), shrink(t))
            assert model(x).shape == (2, out_dim)
    with pytest.raises(ValueError, match=r"expects spectrograms shaped \(B, 2, F, T\)"):
        model(torch.empty(2, 1, 64, 64, device="meta"))


def test_audio_backbone_pools_by_the_maximum_and_trains() -> None:
    torch.manual_seed(0)
    model = build_audio("audio_tiny", width=4)
    x = torch.randn(2, 1, 32, 40)
    out = model(x)
    torch.testing.assert_close(out, model.forward_features(x).amax(dim=(2, 3)))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_avid_conv2d_10_is_the_official_network() -> None:
    model = build_audio("avid_conv2d_10")
    names = [n for n, _ in model.trunk.named_children()]
    assert names == ["conv1", "block1", "block2", "block3", "block4"]
    assert sum(p.numel() for p in model.parameters()) == 4_725_696
    assert model.trunk.block3.conv1.stride == (2, 2) and model.trunk.block4.conv1.stride == (1, 1)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synthetic_sound_files(tmp_path: Path) -> None:
    from vssl.data import synthetic

    settings = {"classes": 1, "videos_per_class": 1, "frames": 16, "size": 32, "test_fraction": 0}
    silent_root = synthetic.make_synthetic(tmp_path / "silent", **settings)
    loud = synthetic.make_synthetic(tmp_path / "loud", **settings, audio=True)
    # without audio: the files of before (the video as write_video encodes it)
    clip = synthetic.render_clip("right", synthetic.clip_rng(0, "right", 0), 16, 32)
    again = write_video(tmp_path / "again.mp4", clip.frames, fps=25)
    name = "train/right/right_0000.mp4"
    assert (silent_root / name).read_bytes() == again.read_bytes()
    assert probe_audio(silent_root / name) is None
    assert probe_audio(loud / name) == (16000, 1)
    meta = json.loads((loud / "synthetic.json").read_text())
    assert meta["settings"]["audio"] == {"codec": "aac", "sample_rate": 16000, "sound": 2}
    assert "audio" not in json.loads((silent_root / "synthetic.json").read_text())["settings"]
    assert _digest(silent_root).keys() == _digest(loud).keys()
    # the track is the clip's sound of its own random stream (AAC is lossy: close, not equal)
    motion = synthetic.get_motion("right")
    sound = synthetic.clip_sound(clip, motion, 25, synthetic.sound_rng(0, "right", 0))[0]
    decoded = read_audio(loud / name, 0.0, sound.shape[0], 16000)[0].numpy()
    assert np.corrcoef(sound[800:-800], decoded[800:-800])[0, 1] > 0.95


@pytest.mark.parametrize(
    ("name", "voice", "sign"),
    [
        ("right", 0, 1),
        ("left", 0, -1),
        ("up", 1, 1),
        ("down", 1, -1),
        ("rotate_cw", 2, 1),
        ("rotate_ccw", 2, -1),
        ("zoom_in", 3, 1),
        ("zoom_out", 3, -1),
    ],
)
def test_the_class_is_which_voice_glides_and_which_way(name: str, voice: int, sign: int) -> None:
    from vssl.data import synthetic

    motion = synthetic.get_motion(name)
    clip = synthetic.render_clip(motion, synthetic.clip_rng(0, name, 3), 32, 32)
    coords = synthetic.motion_coordinates(clip, motion)
    assert np.all(coords[16] == 0)  # the reference frame
    assert np.all(np.abs(coords[:, [j for j in range(4) if j != voice]]) < 1e-9)
    octaves = np.log2(synthetic.voice_pitches(clip, motion, 25, synthetic.sound_rng(0, name, 3)))
    # 0.1 s around frames 8 and 24 (16 frames apart), away from the 40 Hz floor and the ceiling
    early, late = octaves[:, 5600:7200].mean(axis=1), octaves[:, 16000:17600].mean(axis=1)
    rise = late - early
    expected = synthetic.SOUND_GAINS[voice] * (coords[24, voice] - coords[8, voice])
    assert sign * expected > 1.5  # octaves
    assert abs(rise[voice] - expected) < 0.35 or octaves[voice].max() >= np.log2(7200) - 1e-6
    others = [j for j in range(4) if j != voice]
    assert np.all(np.abs(rise[others]) < 0.35)  # only the vibrato


def test_synthetic_sound_is_drawn_per_video() -> None:
    from vssl.data import synthetic

    motion = synthetic.get_motion("right")
    clip = synthetic.render_clip(motion, synthetic.clip_rng(0, "right", 0), 16, 32)
    a = synthetic.clip_sound(clip, motion, 25, synthetic.sound_rng(0, "right", 0))
    assert a.shape == (1, 16 * 640) and a.dtype == np.float32 and np.abs(a).max() <= 1
    again = synthetic.clip_sound(clip, motion, 25, synthetic.sound_rng(0, "right", 0))
    np.testing.assert_array_equal(a, again)
    pitches = [
        synthetic.voice_pitches(clip, motion, 25, synthetic.sound_rng(0, "right", i))[1, 0]
        for i in range(2)
    ]
    assert pitches[0] != pitches[1]  # another video, another base pitch


def test_synthetic_clicks_at_the_bounces() -> None:
    from dataclasses import replace

    from vssl.data import synthetic

    motion = synthetic.get_motion("oscillate_horizontal")
    clip = synthetic.render_clip(motion, synthetic.clip_rng(0, motion.name, 0), 32, 32)
    bounces = synthetic.bounce_frames(clip, motion)
    assert len(bounces) >= 4
    # the same voices without the clicks: a translation kind has the same coordinates
    plain = replace(motion, kind="translate")
    with_clicks = synthetic.clip_sound(clip, motion, 25, synthetic.sound_rng(0, motion.name, 0))
    without = synthetic.clip_sound(clip, plain, 25, synthetic.sound_rng(0, motion.name, 0))
    diff = (with_clicks - without)[0].reshape(32, 640)
    changed = np.nonzero(np.abs(diff).max(axis=1) > 0)[0]
    assert set(changed) == set(bounces.tolist())
    for t in bounces:  # 10 ms from the first sample of the frame, 0.6 at its start
        assert np.all(diff[t, 160:] == 0) and np.all(diff[t, :160] > 0)
        if abs(with_clicks[0, t * 640]) < 1:  # not clipped
            assert diff[t, 0] == pytest.approx(0.6, abs=1e-6)


def test_make_synthetic_audio_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vssl.data.synthetic import main

    argv = [str(tmp_path / "s"), "--classes", "1", "--videos-per-class", "1", "--frames", "4"]
    assert main([*argv, "--size", "16", "--test-fraction", "0", "--quiet", "--audio"]) == 0
    assert probe_audio(tmp_path / "s" / "train" / "right" / "right_0000.mp4") == (16000, 1)
    capsys.readouterr()
    # the same folder without --audio: other settings, refused
    assert main([*argv, "--size", "16", "--test-fraction", "0", "--quiet"]) == 2
    assert "audio" in capsys.readouterr().err
