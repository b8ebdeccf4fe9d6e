"""benchmarks/gpu_budget.py runs end to end at tiny sizes; without CUDA it says so and estimates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_budget.py"


@pytest.fixture(scope="module")
def gpu_budget():
    spec = importlib.util.spec_from_file_location("gpu_budget", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_budget"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_budget"]


def test_tiny_run_prints_every_table(gpu_budget, video_factory, tmp_path, capsys):
    source = video_factory("source.mp4", num_frames=40, size=(48, 64))
    args = ["--source", str(source), "--workdir", str(tmp_path / "work"), "--raw-size", "48x64"]
    args += ["--short-sides", "32", "--seconds", "0.2", "--rounds", "2", "--backends", "pyav"]
    args += ["--models", "tiny3d:8:32", "--batch", "2", "--steps", "1", "--warmup", "1"]
    results = gpu_budget.main(args)
    out = capsys.readouterr().out
    work = tmp_path / "work"
    raw, prepared = work / "raw_64x48_gop250.mp4", work / "prepared_32_gop8.mp4"
    from vssl.data.index import probe_video

    # the raw-like file plays the source three times; the prepared one is it at short side 32
    assert probe_video(raw).num_frames == probe_video(prepared).num_frames == 120
    assert (probe_video(prepared).height, probe_video(prepared).width) == (32, 42)
    assert set(results["cpu"]) == {("pyav", "raw-like", 32), ("pyav", "prepared-32", 32)}
    assert all(rate > 0 for pair in results["cpu"].values() for rate in pair)
    assert "pyav       | prepared-32  | 32" in out
    train = results["train"]["tiny3d:8:32"]
    assert train["estimate"] == pytest.approx(0.35 * 990e12 / train["flops"])
    cores = results["budget"]["tiny3d:8:32", "pyav", "prepared-32"]
    gpu = train["measured"] if train["measured"] is not None else train["estimate"]
    assert cores == pytest.approx(gpu / results["cpu"]["pyav", "prepared-32", 32][0])
    if not torch.cuda.is_available():
        assert "No CUDA device" in out and "(estimate)" in out and "no GPU" in out
        assert train["measured"] is None


def test_flop_count_matches_a_hand_count(gpu_budget, monkeypatch):
    """A 1x1x1 conv from 3 to 4 channels on a 2x8x8 clip: its forward is 2 * 3 * 4 FLOPs per
    output position; the clip needs no gradient, so backward is the weight gradient alone, one
    forward's worth."""
    import vssl.backbones

    def one_conv(name: str) -> torch.nn.Module:  # built on the meta device, as build() is
        return torch.nn.Conv3d(3, 4, kernel_size=1, bias=False)

    monkeypatch.setattr(vssl.backbones, "build", one_conv)
    forward = 2 * 3 * 4 * (2 * 8 * 8)
    assert gpu_budget.train_flops("one-conv", 2, 8) == 2 * forward


def test_training_step_path_runs_on_cpu(gpu_budget):
    """The GPU training loop is device-generic; on the CPU it runs with bf16 autocast too."""
    rate = gpu_budget.train_rate("tiny3d", 4, 16, batch=2, steps=1, warmup=1, device="cpu")
    assert rate > 0


def test_cuda_branch_prints_measured_figures(
    gpu_budget, video_factory, tmp_path, monkeypatch, capsys
):
    """The GPU branch, run on the CPU: decoding and training are sent to the CPU, the rest of
    the branch (tables, budget from measured figures) runs as on a GPU machine."""
    decode_rate, train_rate = gpu_budget.decode_rate, gpu_budget.train_rate
    monkeypatch.setattr(gpu_budget, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu_budget, "device_name", lambda: "pretend GPU")
    monkeypatch.setattr(
        gpu_budget, "decode_rate", lambda *a, **k: decode_rate(*a, **{**k, "device": "cpu"})
    )
    monkeypatch.setattr(gpu_budget, "train_rate", lambda *a, **k: train_rate(*a, **k, device="cpu"))
    source = video_factory("source.mp4", num_frames=40, size=(48, 64))
    args = ["--source", str(source), "--workdir", str(tmp_path), "--raw-size", "48x64"]
    args += ["--short-sides", "32", "--seconds", "0.1", "--rounds", "1", "--backends", "pyav"]
    args += ["--models", "tiny3d:8:32", "--batch", "2", "--steps", "1", "--warmup", "1"]
    results = gpu_budget.main(args)
    out = capsys.readouterr().out
    assert "GPU: pretend GPU" in out and "No CUDA device" not in out
    train = results["train"]["tiny3d:8:32"]
    assert train["measured"] > 0 and "(measured)" in out
    if gpu_budget.usable("torchcodec"):
        assert set(results["gpu_decode"]) == {
            ("torchcodec", "raw-like", 32),
            ("torchcodec", "prepared-32", 32),
        }
        assert "GPU decode of prepared-32 at 32" in out


def test_models_decode_at_the_short_side_their_crops_need(gpu_budget):
    assert gpu_budget.decode_side(112, [128, 256]) == 128
    assert gpu_budget.decode_side(224, [128, 256]) == 256
    assert gpu_budget.decode_side(312, [128, 256]) == 256


def test_missing_source_is_refused(gpu_budget, tmp_path):
    with pytest.raises(SystemExit):
        gpu_budget.main(["--source", str(tmp_path / "nope.mp4"), "--workdir", str(tmp_path)])
