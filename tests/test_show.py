import struct
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from vssl.data.encode import write_video
from vssl.data.sampling import sample_cvrl_starts
from vssl.data.synthetic import clip_rng, render_clip
from vssl.show import (
    FIGURE_SIZE,
    STATISTICS_LEGEND,
    build_task,
    main,
    sample_task,
    statistics_figure,
    task_figure,
    videomae_reconstruction,
)
from vssl.tasks.clip_order import clip_orders

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
        "rotation, playback_rate"
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
