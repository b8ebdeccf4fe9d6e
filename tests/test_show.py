import struct
from pathlib import Path

import numpy as np
import pytest

from vssl.data.encode import write_video
from vssl.data.synthetic import clip_rng, render_clip
from vssl.show import FIGURE_SIZE, main

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
    assert main(["statistics", str(video), "--out", str(out), "--clip-len", "8"]) == 1
    err = capsys.readouterr().err
    assert f"{video}: a clip of 9 frames from frame 0 does not fit in the video's 6 frames" in err
    assert main(["statistics", str(tmp_path / "missing.mp4"), "--out", str(out)]) == 1
    assert "missing.mp4: file not found" in capsys.readouterr().err
    assert (
        main(["statistics", str(video), "--out", str(out), "--clip-len", "2", "--size", "20"]) == 1
    )
    assert f"{video}: " in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(["statistics", str(video)])  # --out is required
