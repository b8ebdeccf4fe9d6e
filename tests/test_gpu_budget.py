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
    results = gpu_budget.main(args + ["--parts", "budget"])
    out = capsys.readouterr().out
    assert "statistics" not in results and "Statistics task" not in out
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
    results = gpu_budget.main(args + ["--parts", "budget"])
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


STATISTICS_ARGS = ["--raw-size", "48x64", "--parts", "statistics", "--rounds", "1"]
STATISTICS_ARGS += ["--statistics-clips", "4", "--statistics-batch", "2", "--label-passes", "1"]
STATISTICS_ARGS += ["--statistics-seconds", "0.05", "--statistics-model", "tiny3d:16:112"]


def test_statistics_part_alone_on_cpu(gpu_budget, video_factory, tmp_path, capsys):
    """--parts statistics: the torch labels on the CPU (labelled so) agree with the numpy labels
    on every label, the worker modes' rates and the cores they need are printed, and the decode
    and training tables are not."""
    source = video_factory("source.mp4", num_frames=40, size=(48, 64))
    args = ["--source", str(source), "--workdir", str(tmp_path / "work"), *STATISTICS_ARGS]
    results = gpu_budget.main(args)
    out = capsys.readouterr().out
    stats = results["statistics"]
    assert results["cpu"] == {} and results["train"] == {} and "CPU decode" not in out
    # the prepared copy and its flow file, from the raw-like file
    prepared = tmp_path / "work" / "statistics_raw_64x48_gop250" / "prepared_128_mjpeg"
    assert (prepared / "raw_64x48_gop250.mp4").is_file()
    assert (prepared / "raw_64x48_gop250.mp4.flow").is_file()
    everything = {"clips": 4, "motion": 4 * 14, "appearance": 4 * 13, "clips_equal": 4}
    assert stats["agreement"] == everything
    assert "agreement with the numpy labels on 4 clips" in out
    assert "motion 56 of 56, appearance 52 of 52 labels equal; 4 of 4 clips" in out
    assert stats["deterministic"] == everything and stats["deterministic_error"] == ""
    assert "use_deterministic_algorithms(True): runs" in out
    assert stats["label_ms"] > 0
    modes = [
        "flow computed, labels on the device",
        "flow read (prepare --flow), labels on the device",
        "flow computed, labels in the worker (reference)",
    ]
    assert list(stats["worker"]) == modes and all(r > 0 for r in stats["worker"].values())
    for mode in modes:
        assert mode in out
    gpu = stats["gpu"]["rate"]
    for mode, rate in stats["worker"].items():
        assert stats["cores"][mode] == pytest.approx(gpu / rate)
    if not torch.cuda.is_available():
        assert "No CUDA device" in out and "(CPU figure)" in out
        assert stats["gpu"]["label"] == "estimate" and "(estimate)" in out
        flops = gpu_budget.train_flops("tiny3d", 16, 112)
        assert gpu == pytest.approx(0.35 * 990e12 / flops)
        assert stats["gpu"]["with_labels"] == gpu and "not measured without CUDA" in out


def test_statistics_cuda_branch_adds_the_labels_gpu_time(
    gpu_budget, video_factory, tmp_path, monkeypatch, capsys
):
    """The statistics part's GPU branch, run on the CPU: the model's training rate is measured
    (here on the CPU), and the labels' time per clip is added to the training step's."""
    train_rate = gpu_budget.train_rate
    monkeypatch.setattr(gpu_budget, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu_budget, "device_name", lambda: "pretend GPU")
    monkeypatch.setattr(gpu_budget, "label_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(gpu_budget, "train_rate", lambda *a, **k: train_rate(*a, **k, device="cpu"))
    source = video_factory("source.mp4", num_frames=40, size=(48, 64))
    args = ["--source", str(source), "--workdir", str(tmp_path), *STATISTICS_ARGS]
    args += ["--statistics-model", "tiny3d:4:16", "--batch", "2", "--steps", "1", "--warmup", "1"]
    stats = gpu_budget.main(args)["statistics"]
    out = capsys.readouterr().out
    assert "labels on CUDA (pretend GPU)" in out and "No CUDA device" not in out
    gpu, ms = stats["gpu"]["rate"], stats["label_ms"]
    assert stats["gpu"]["label"] == "measured" and "(measured)" in out
    assert stats["gpu"]["with_labels"] == pytest.approx(1 / (1 / gpu + ms / 1e3))
    assert f"{stats['gpu']['with_labels']:.0f} clips/s with the labels'" in out
    device_mode = "flow read (prepare --flow), labels on the device"
    reference = "flow computed, labels in the worker (reference)"
    with_labels = stats["gpu"]["with_labels"]
    assert stats["cores"][device_mode] == pytest.approx(with_labels / stats["worker"][device_mode])
    assert stats["cores"][reference] == pytest.approx(gpu / stats["worker"][reference])


def test_label_agreement_counts_each_differing_label(gpu_budget):
    """Random 16x16 clips and flow: the torch labels equal the numpy ones; one motion and two
    appearance labels changed in the expected labels are counted as three unequal labels in
    two clips."""
    gen = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (3, 4, 3, 16, 16), dtype=torch.uint8, generator=gen)
    flow = torch.randn(3, 4, 2, 16, 16, generator=gen) * 3
    batches = [(video[:2], flow[:2]), (video[2:], flow[2:])]
    expected = gpu_budget.numpy_labels(batches)
    assert gpu_budget.label_agreement(batches, expected) == {
        "clips": 3,
        "motion": 42,
        "appearance": 39,
        "clips_equal": 3,
    }
    expected[0][1, 3] += 1  # clip 1: a motion label
    expected[1][0, 14] += 1  # clip 2: two appearance labels
    expected[1][0, 26] += 1
    counts = gpu_budget.label_agreement(batches, expected)
    assert counts == {"clips": 3, "motion": 41, "appearance": 37, "clips_equal": 1}
    assert gpu_budget.agreement_line(counts) == (
        "motion 41 of 42, appearance 37 of 39 labels equal; 1 of 3 clips with all 27 equal"
    )


def test_deterministic_refusal_is_reported_and_the_setting_restored(gpu_budget, monkeypatch):
    def refuse(batches, expected):
        assert torch.are_deterministic_algorithms_enabled()
        raise RuntimeError("index_add_cuda_ does not have a deterministic implementation\nhint")

    monkeypatch.setattr(gpu_budget, "label_agreement", refuse)
    counts, error = gpu_budget.deterministic_agreement([], [])
    assert counts is None
    assert error == "index_add_cuda_ does not have a deterministic implementation"
    assert not torch.are_deterministic_algorithms_enabled()


def test_bad_parts_and_batch_are_refused(gpu_budget, video_factory, tmp_path, capsys):
    source = video_factory("source.mp4", num_frames=40, size=(48, 64))
    base = ["--source", str(source), "--workdir", str(tmp_path)]
    with pytest.raises(SystemExit):
        gpu_budget.main(base + ["--parts", "budget,stats"])
    assert "--parts 'budget,stats': choose from budget, statistics" in capsys.readouterr().err
    args = base + [*STATISTICS_ARGS, "--statistics-clips", "2", "--statistics-batch", "4"]
    with pytest.raises(SystemExit):
        gpu_budget.main(args)
    err = capsys.readouterr().err
    assert "--statistics-clips (2) must be at least --statistics-batch (4)" in err


def test_a_failing_part_does_not_hide_the_others(
    gpu_budget, video_factory, tmp_path, monkeypatch, capsys
):
    """The one GPU run must print what it can: when the budget part fails and the torch labels
    fail on the device, the worker rows and cores (without the labels' GPU time) still print,
    and the run ends in an error naming the failed part."""

    def fail(*args, **kwargs):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(gpu_budget, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu_budget, "device_name", lambda: "pretend GPU")
    monkeypatch.setattr(gpu_budget, "label_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(gpu_budget, "budget_part", fail)
    monkeypatch.setattr(gpu_budget, "torch_labels", fail)
    monkeypatch.setattr(gpu_budget, "train_rate", lambda *a, **k: 1000.0)
    source = video_factory("source.mp4", num_frames=40, size=(48, 64))
    args = ["--source", str(source), "--workdir", str(tmp_path), *STATISTICS_ARGS]
    with pytest.raises(RuntimeError, match=r"part\(s\) budget failed"):
        gpu_budget.main(args + ["--parts", "budget,statistics"])
    out = capsys.readouterr().out
    assert "labels on CUDA (pretend GPU): failed: RuntimeError: no kernel image" in out
    assert "1000 (measured); the labels' GPU time not included: they failed on the GPU" in out
    assert "flow read (prepare --flow), labels on the device   | 1000" in out
