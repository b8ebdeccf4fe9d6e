import struct
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from vssl.data.audio import write_video_with_audio
from vssl.data.encode import write_video
from vssl.data.sampling import RhoClips, sample_cvrl_starts
from vssl.data.synthetic import clip_rng, render_clip
from vssl.show import (
    FIGURE_SIZE,
    STATISTICS_LEGEND,
    build_task,
    main,
    sample_task,
    siammae_reconstruction,
    statistics_figure,
    task_figure,
    videomae_reconstruction,
)
from vssl.tasks.avid import AudioVisualClip
from vssl.tasks.clip_order import clip_orders
from vssl.tasks.siammae import FramePairs, patch_target, random_mask
from vssl.tasks.tdl import TemporalTripletSampler
from vssl.tasks.vjepa import mask_indices, multiblock_mask

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected_size(dpi: int) -> tuple[int, int]:
    return round(FIGURE_SIZE[0] * dpi), round(FIGURE_SIZE[1] * dpi)


def test_show_statistics_on_a_self_made_clip(tmp_path, capsys):
    clip = render_clip("rotate_cw", clip_rng(0, "rotate_cw", 0), frames=12, size=48)
    video = write_video(tmp_path / "clip.mp4", clip.frames)
    out = tmp_path / "figs" / "stats.png"
    argv = [
        "statistics",
        str(video),
        "--out",
        str(out),
        "--clip-len",
        "8",
        "--size",
        "32",
        "--decode-size",
        "40",
        "--start",
        "2",
        "--dpi",
        "40",
    ]
    assert main(argv) == 0
    assert png_size(out) == expected_size(40)
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.skipif(not (VIDEOS / "vtest.avi").is_file(), reason="../shared/videos is absent")
def test_show_statistics_on_a_real_video(tmp_path):
    out = tmp_path / "vtest.png"
    assert (
        main(
            [
                "statistics",
                str(VIDEOS / "vtest.avi"),
                "--out",
                str(out),
                "--start",
                "100",
                "--dpi",
                "50",
            ]
        )
        == 0
    )
    assert png_size(out) == expected_size(50)


def test_show_errors_name_the_file(tmp_path, capsys):
    clip = np.zeros((6, 32, 32, 3), np.uint8)
    video = write_video(tmp_path / "short.mp4", clip)
    out = tmp_path / "x.png"
    assert main(["statistics", str(video), "--out", str(out), "--clip-len", "8"]) == 2
    err = capsys.readouterr().err
    assert f"{video}: a clip of 9 frames from frame 0 does not fit in the video's 6 frames" in err
    assert main(["statistics", str(tmp_path / "missing.mp4"), "--out", str(out)]) == 2
    assert "missing.mp4: file not found" in capsys.readouterr().err
    assert (
        main(["statistics", str(video), "--out", str(out), "--clip-len", "2", "--size", "20"]) == 2
    )
    assert f"{video}: " in capsys.readouterr().err and not out.exists()
    assert main(["statistics", str(video)]) == 2  # --out is required
    assert capsys.readouterr().err == (
        "vssl show: error: the following arguments are required: out\n"
    )


TASK_NAMES = ("rspnet", "cvrl", "videomae", "clip_order", "rotation", "playback_rate")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    clip = render_clip("rotate_cw", clip_rng(0, "rotate_cw", 0), frames=40, size=40)
    return write_video(tmp_path_factory.mktemp("show") / "clip.mp4", clip.frames)


def test_show_reads_its_options_from_a_config_file(video, tmp_path, capsys):
    out, given = tmp_path / "file.png", tmp_path / "given.png"
    config = tmp_path / "show.yaml"
    config.write_text(f"video: {video}\nout: {out}\ndpi: 40\nseed: 3\n")
    # the command line's --out comes after the file's
    assert main(["rotation", "--config", str(config), "--out", str(given)]) == 0
    assert f"wrote {given}" in capsys.readouterr().out
    assert given.is_file() and not out.exists()
    config.write_text("video: x.mp4\nout: x.png\nseeds: 3\n")
    assert main(["rotation", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"vssl show: error: {config}, line 3: seeds: no such option; did you mean 'seed'?"
    )


@pytest.mark.parametrize("task", TASK_NAMES)
def test_show_task_writes_a_png(task, video, tmp_path, capsys):
    out = tmp_path / f"{task}.png"
    assert main([task, str(video), "--out", str(out), "--dpi", "40", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"clip.mp4: {task}: " in printed and f"wrote {out}" in printed
    width, height = png_size(out)
    assert 200 <= width <= 1000 and 100 <= height <= 1000


def test_show_unknown_task_lists_the_tasks(capsys):
    assert main(["rotations", "x.mp4", "--out", "x.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: unknown task 'rotations'; tasks: statistics, rspnet, cvrl, videomae, clip_order, "
        "rotation, playback_rate, siammae, vjepa, rho_byol, rho_moco, tdl, avid, vatt"
    ]


def test_show_cvrl_gap_is_the_samplers_draw(video):
    s = sample_task("cvrl", video, seed=5)
    _, line = task_figure(s)
    # the dataset's draw for item 0 of epoch 0 with data seed 5, by hand
    rng = np.random.default_rng(np.random.SeedSequence([5, 0, 0, 0]))
    first, second = sample_cvrl_starts(40, s.spec.clip_len, s.spec.stride, rng)
    assert s.extra["starts"] == (first, second) and s.extra["gap"] == abs(second - first)
    assert line.endswith(
        f"clip 1 starts at frame {first}, clip 2 at frame {second}, gap {abs(second - first)}"
    )
    # the pictured clips are the augmented floats of both views, each with the clip's frames
    assert s.batch["video"].dtype == torch.float32 and s.batch["video2"].shape[2] == s.spec.clip_len
    assert list(s.views["video"]) == list(first + s.spec.stride * np.arange(s.spec.clip_len))


def test_show_clip_order_label_is_the_permutation(video):
    for seed in range(4):
        s = sample_task("clip_order", video, seed=seed)
        task_figure(s)
        label, order = s.extra["label"], s.extra["order"]
        assert order == clip_orders(s.task.tuple_len)[label] and label == int(s.sample["order"])
        starts = s.views["video"][:, 0]
        # input i is clip order[i] of the tuple: its start is the tuple's start + order[i] steps
        step = s.task.clip_sampler("train", s.spec).step
        assert list(starts - starts.min()) == [k * step for k in order]
        assert s.batch["video"].shape[:2] == (1, s.task.tuple_len)


def test_show_rotation_videomae_and_rate_come_from_the_task(video):
    s = sample_task("rotation", video)
    clip = s.batch["video"]
    assert s.extra["labels"].tolist() == [0, 1, 2, 3]
    assert torch.equal(s.extra["clips"][1], torch.rot90(clip[0], 1, dims=(-2, -1)))
    s = sample_task("videomae", video, seed=2)
    mask, (t, h, w) = s.extra["mask"][0], s.extra["grid"]
    assert mask.shape == (t * h * w,) and int(mask.sum()) == t * int(0.75 * h * w)
    assert torch.equal(mask.reshape(t, h * w), mask[: h * w].repeat(t, 1))  # a tube mask
    s = sample_task("playback_rate", video, seed=1)
    rate = s.task.rates[int(s.views["rate"])]
    assert int(s.sample["rate"]) == int(s.views["rate"])
    assert set(np.diff(s.views["video"])) == {rate * s.spec.stride}


def test_show_animate_writes_every_frame(video, tmp_path):
    out, gif = tmp_path / "rate.png", tmp_path / "anim" / "rate.gif"
    argv = ["playback_rate", str(video), "--out", str(out), "--animate", str(gif), "--dpi", "30"]
    assert main(argv) == 0
    with Image.open(gif) as im:
        assert (
            im.format == "GIF" and im.n_frames == sample_task("playback_rate", video).spec.clip_len
        )


def test_show_task_errors_name_the_file(video, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["cvrl", str(tmp_path / "missing.mp4"), "--out", str(out)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"vssl show: error: {tmp_path / 'missing.mp4'}: file not found"
    )
    assert main(["videomae", str(video), "--out", str(out), "--size", "36"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"vssl show: error: {video}: ")
        and "multiples of the tubelet (2, 8, 8)" in err
    )
    assert not out.exists()


@pytest.mark.skipif(not (VIDEOS / "vtest.avi").is_file(), reason="../shared/videos is absent")
def test_show_tasks_on_a_real_video(tmp_path):
    for task in ("cvrl", "clip_order"):
        out = tmp_path / f"{task}.png"
        assert main([task, str(VIDEOS / "vtest.avi"), "--out", str(out), "--dpi", "30"]) == 0
        assert png_size(out)[0] > 100


def test_statistics_figure_titles_count_frames_alike():
    clip = render_clip("rotate_cw", clip_rng(0, "rotate_cw", 0), frames=9, size=32).frames
    fig = statistics_figure(np.asarray(clip), first=5)
    assert fig.get_suptitle() == (
        "spatio-temporal statistics of a 8-frame clip at 32x32, frames 5..12 (+ frame 13 for the flow)"
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == [f"frame {5 + k} (clip frame {k + 1} of 8)" for k in (0, 2, 5, 7)]
    assert STATISTICS_LEGEND in [t.get_text() for t in fig.texts]


def test_videomae_reconstruction_undoes_the_target(video):
    s = sample_task("videomae", video, seed=1)
    task, clip, mask = s.task, s.batch["video"], s.extra["mask"]
    pixels = clip[0] * task.augment.std + task.augment.mean  # (C, T, H, W) in [0, 1]
    # a network that predicts its target exactly reconstructs the input
    task.decode = lambda encoded, m: task.target(clip, m)
    rebuilt = videomae_reconstruction(task, clip, mask)
    assert np.abs(rebuilt - pixels.clamp(0, 1).permute(1, 2, 3, 0).numpy()).max() < 1e-4


def test_show_videomae_with_a_checkpoint(video, tmp_path, capsys):
    task, _ = build_task("videomae")
    ckpt = tmp_path / "mae.ckpt"
    state = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    torch.save({**state, "pytorch-lightning_version": lightning.__version__}, ckpt)
    out = tmp_path / "mae.png"
    argv = ["videomae", str(video), "--out", str(out), "--ckpt", str(ckpt), "--dpi", "40"]
    assert main(argv) == 0
    plain = tmp_path / "plain.png"
    assert main(["videomae", str(video), "--out", str(plain), "--dpi", "40"]) == 0
    assert png_size(out)[1] > png_size(plain)[1]  # one more row: the reconstruction
    s = sample_task("videomae", video, ckpt=ckpt)
    assert s.extra["reconstruction"].shape == (s.spec.clip_len, 32, 32, 3)
    assert main(["cvrl", str(video), "--out", str(out), "--ckpt", str(ckpt)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"error: {ckpt}: holds a VideoMAE checkpoint, not one of cvrl (CVRL)")
    )


def first_draw(seed: int) -> np.random.Generator:
    """The generator the dataset gives item 0 of epoch 0 under data seed ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, 0, 0, 0]))


def expected_line(task: str, seed: int) -> str:
    """The line `vssl show TASK` prints for the fixture's 40-frame clip, from the task's own
    sampler (and mask generator) run by hand with the configs' settings."""
    rng = first_draw(seed)
    if task == "siammae":
        past, future = FramePairs(4, 48)(40, rng)["video"]
        masked = int(random_mask(1, 64, 0.95, torch.Generator().manual_seed(seed)).sum())
        return (
            f"siammae: past frame {past}, future frame {future}, gap {future - past}, "
            f"{masked} of 64 patches masked"
        )
    if task in ("rho_byol", "rho_moco"):
        starts = RhoClips(clip_len=8, stride=2, rho=2).starts(40, rng)
        shown = ", ".join(str(k) for k in starts)
        return f"{task}: 2 clips of 8 frames (stride 2) starting at frames {shown}"
    anchor, negative = TemporalTripletSampler(clip_len=4, stride=2, min_gap=2).starts(40, rng)
    return (
        f"tdl: anchor and positive frames {anchor}..{anchor + 6}, negative frames "
        f"{negative}..{(negative + 6) % 40} (stride 2)"
    )


@pytest.mark.parametrize("task", ["siammae", "rho_byol", "tdl"])
def test_show_prints_the_samplers_draw(task, video, tmp_path, capsys):
    out = tmp_path / f"{task}.png"
    assert main([task, str(video), "--out", str(out), "--dpi", "30", "--seed", "7"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"clip.mp4: {expected_line(task, 7)}", f"wrote {out}"]
    assert png_size(out)[0] > 100


def test_show_siammae_pair_and_mask_are_the_tasks(video):
    s = sample_task("siammae", video, seed=4)
    past, future = FramePairs(4, 48)(40, first_draw(4))["video"]
    assert list(s.views["video"]) == [past, future]
    _, line = task_figure(s)
    assert s.extra["gap"] == future - past and f"gap {future - past}," in line
    # the mask is the task's first draw: MAE's random masking from a generator seeded with 4
    mask = random_mask(1, 64, 0.95, torch.Generator().manual_seed(4))
    assert torch.equal(s.extra["mask"], mask) and int(mask.sum()) == 61
    assert s.batch["video"].shape == (1, 3, 2, 64, 64) and s.extra["grid"] == (1, 8, 8)


def test_siammae_reconstruction_undoes_the_target(video):
    s = sample_task("siammae", video, seed=1)
    task, clip, mask = s.task, s.batch["video"], s.extra["mask"]
    future = clip[:, :, 1]
    # a network that predicts its target exactly reconstructs the future frame
    target = patch_target(future, task.patch, task.normalize_target)
    task.decode = lambda past, visible, m: target[m].reshape(1, -1, target.shape[-1])
    rebuilt = siammae_reconstruction(task, clip, mask)
    pixels = future[0] * task.augment.std.view(3, 1, 1) + task.augment.mean.view(3, 1, 1)
    assert np.abs(rebuilt - pixels.clamp(0, 1).permute(1, 2, 0).numpy()).max() < 1e-4


def test_show_siammae_with_a_checkpoint_and_animation(video, tmp_path):
    task, _ = build_task("siammae")
    ckpt = tmp_path / "siammae.ckpt"
    state = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    torch.save({**state, "pytorch-lightning_version": lightning.__version__}, ckpt)
    out, plain, gif = tmp_path / "rec.png", tmp_path / "plain.png", tmp_path / "pair.gif"
    argv = ["siammae", str(video), "--out", str(out), "--ckpt", str(ckpt), "--dpi", "30"]
    assert main([*argv, "--animate", str(gif)]) == 0
    assert main(["siammae", str(video), "--out", str(plain), "--dpi", "30"]) == 0
    assert png_size(out)[0] > png_size(plain)[0]  # one more panel: the reconstruction
    with Image.open(gif) as im:
        assert im.n_frames == 2  # the past frame, then the future one


def test_show_vjepa_masks_are_the_tasks(video, capsys, tmp_path):
    s = sample_task("vjepa", video, seed=5)
    grid = s.extra["grid"]
    assert grid == (8, 4, 4) and s.batch["video"].shape == (1, 3, 16, 32, 32)
    # the task's own masks: multi-block masking of the paper's two sets from the generator
    # seeded with 5, one set after the other
    generator = torch.Generator().manual_seed(5)
    for k, spec in enumerate(s.task.mask_specs):
        mask = multiblock_mask(1, grid, spec, generator)
        assert torch.equal(torch.from_numpy(s.extra["masks"][k]).flatten()[None], mask)
        context, target = mask_indices(mask)
        assert torch.equal(s.extra["indices"][k][0], context)
        assert torch.equal(s.extra["indices"][k][1], target)
        corners, size = s.extra["blocks"][k]
        assert corners.shape == (spec.num_blocks, 3) and size[0] == 8  # blocks span all time
    fresh, _ = build_task("vjepa")
    torch.manual_seed(5)
    drawn = fresh.draw_masks(s.batch["video"])
    assert all(
        torch.equal(a, b)
        for pair, ours in zip(drawn, s.extra["indices"], strict=True)
        for a, b in zip(pair, ours, strict=True)
    )
    _, line = task_figure(s)
    counts = [(len(c[0]), len(t[0])) for c, t in s.extra["indices"]]
    frames = s.views["video"]
    sizes = ["x".join(str(n) for n in size) for _, size in s.extra["blocks"]]
    assert line == (
        f"vjepa: frames {frames[0]}..{frames[-1]}, 8x4x4 tokens; short-range 8 blocks of "
        f"{sizes[0]}, {counts[0][1]} target and {counts[0][0]} context tokens; long-range 2 "
        f"blocks of {sizes[1]}, {counts[1][1]} target and {counts[1][0]} context tokens"
    )
    assert all(c + t == 128 for c, t in counts)


def test_show_rho_clips_and_tdl_segments_match_the_samplers(video):
    s = sample_task("rho_moco", video, seed=2, stage="val")
    task_figure(s)
    starts = RhoClips(clip_len=8, stride=2, rho=2).starts(40, first_draw(2))
    assert s.extra["starts"] == list(starts)
    assert s.batch["clips"].shape == (1, 2, 3, 8, 56, 56) and s.batch["clips"].is_floating_point()
    s = sample_task("tdl", video, seed=2, stage="val")
    task_figure(s)
    assert s.extra["starts"] == TemporalTripletSampler(4, 2, 2).starts(40, first_draw(2))
    assert torch.equal(s.sample["anchor"], s.sample["positive"])  # val: one centre crop alike
    assert s.extra["rows"][0][0] == "anchor"  # no TCA outside training
    s = sample_task("tdl", video, seed=2)
    task_figure(s)
    assert s.extra["rows"][0][0] == "anchor\n(with TCA)"


@pytest.fixture(scope="module")
def sound_video(tmp_path_factory) -> Path:
    """The 40-frame clip at 8 fps (5 s) with a rising tone."""
    clip = render_clip("rotate_cw", clip_rng(0, "rotate_cw", 0), frames=40, size=40)
    t = np.arange(5 * 16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * (300 + 100 * t) * t))[None].astype(np.float32)
    path = tmp_path_factory.mktemp("show_av") / "av.mp4"
    return write_video_with_audio(path, clip.frames, tone, fps=8)


@pytest.mark.parametrize("task", ["avid", "vatt"])
def test_show_audio_tasks_print_both_time_spans(task, sound_video, tmp_path, capsys):
    out = tmp_path / f"{task}.png"
    assert main([task, str(sound_video), "--out", str(out), "--dpi", "30", "--seed", "6"]) == 0
    offsync = 0.5 if task == "avid" else None  # AVID's official jitter of the sound window
    views = AudioVisualClip(8, 2, 1.0, 16000, offsync=offsync)(40, first_draw(6))
    start, span = int(views["video"][0]), views["audio"]
    # a clip of frames start, start + 2, ..., start + 14 is shown from start / 8 s to
    # (start + 15) / 8 s; VATT's 1 s of sound is centred on that, AVID's placed by the jitter
    centre = span.start_time(8) + 0.5
    if task == "vatt":
        assert centre == (start + start + 15) / 16
    what = "log spectrogram, 64 bins x 101 steps" if task == "avid" else "waveform, 16000 samples"
    assert capsys.readouterr().out.splitlines() == [
        f"av.mp4: {task}: frames {start}..{start + 14} ({start / 8:.2f}..{(start + 15) / 8:.2f} "
        f"s), audio {centre - 0.5:.2f}..{centre + 0.5:.2f} s at 16000 Hz, {what}",
        f"wrote {out}",
    ]
    assert span.start == start and png_size(out)[0] > 100


def test_show_avid_pictures_the_tasks_spectrogram(sound_video):
    s = sample_task("avid", sound_video, seed=1, stage="val")
    _, line = task_figure(s)
    # validation: the centre clip (of the 40 - 15 = 25 last starts, start 25 // 2 = 12) and no
    # volume jitter, so the picture is the spectrogram of the sample's waveform
    assert list(s.views["video"]) == list(12 + 2 * np.arange(8))
    assert torch.equal(s.batch["audio"], s.task.spectrogram(s.sample["audio"][None]))
    assert s.extra["spans"] == ((12 / 8, 27 / 8), (39 / 16 - 0.5, 39 / 16 + 0.5))
    assert line.startswith("avid: frames 12..26 (1.50..3.38 s), audio 1.94..2.94 s")


def test_show_audio_task_on_a_silent_video_names_the_file(video, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["vatt", str(video), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vssl show: error: {video}: no audio stream, and vatt needs the clip's sound"
    )
    assert not out.exists()
