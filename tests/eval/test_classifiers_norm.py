"""The feature normalisation of the linear probe and kNN (``normalize``, ``--linear-norm``,
``--knn-norm``):
statistics from the training features only, the exact transforms, a common offset that
uncentred L2 cannot see past, and the option in ``vssl probe`` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from vssl.cli import main
from vssl.eval.classifiers import (
    FeatureNorm,
    knn_accuracy,
    knn_scores,
    probe_accuracy,
    probe_fit,
    train_linear_probe,
)

T = torch.tensor
TRAIN = T([[1.0, 5.0, 7.0], [3.0, 5.0, -1.0]])  # mean (2, 5, 3), std (1, 0, 4)
TEST = T([[4.0, 6.0, 11.0]])


def test_each_transform_on_constructed_features():
    # The second dimension is constant over the training set: it is centred, not divided by 0.
    standard = FeatureNorm.fit("standardize", TRAIN)
    torch.testing.assert_close(standard.mean, T([2.0, 5.0, 3.0]))
    torch.testing.assert_close(standard.std, T([1.0, 1.0, 4.0]))
    torch.testing.assert_close(standard(TEST), T([[2.0, 1.0, 2.0]]))
    torch.testing.assert_close(standard(TRAIN), T([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]]))
    centre = FeatureNorm.fit("center", TRAIN)
    torch.testing.assert_close(centre(TEST), T([[2.0, 1.0, 8.0]]) / math.sqrt(69.0))
    plain = FeatureNorm.fit("l2", TRAIN)
    torch.testing.assert_close(plain(TEST), TEST / math.sqrt(173.0))
    with pytest.raises(ValueError, match="must be one of \\('l2', 'center', 'standardize'\\)"):
        FeatureNorm.fit("batchnorm", TRAIN)


def test_the_probe_keeps_its_training_statistics_for_the_test_features():
    gen = torch.Generator().manual_seed(0)
    train = 3.0 + 2.0 * torch.randn(40, 5, generator=gen)
    labels = torch.arange(40) % 2
    probe = train_linear_probe(train, labels, 2, steps=5, normalize="standardize")
    torch.testing.assert_close(probe.norm.mean, train.mean(dim=0))
    torch.testing.assert_close(probe.norm.std, train.std(dim=0, unbiased=False))
    test = 100.0 + torch.randn(7, 5, generator=gen)  # far from the training distribution
    expected = probe.linear((test - train.mean(dim=0)) / train.std(dim=0, unbiased=False))
    torch.testing.assert_close(probe(test), expected)
    probe(test)  # applying the probe fits nothing: the statistics stay the training set's
    torch.testing.assert_close(probe.norm.mean, train.mean(dim=0))
    assert set(probe.state_dict()) == {"norm.mean", "norm.std", "linear.weight", "linear.bias"}


def _offset_blobs(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Four classes 0.05 apart along their own axes, noise 0.01, all at (1000, ..., 1000): the
    cosine of any two features is 1 to float32 precision, as for a network whose pooled
    features share one large component."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    feats = 1000.0 + 0.05 * torch.eye(8)[labels] + 0.01 * torch.randn(n, 8, generator=gen)
    return feats, labels


def test_a_common_offset_defeats_uncentred_l2_and_not_standardisation():
    x, y = _offset_blobs(200, seed=0)
    xt, yt = _offset_blobs(200, seed=1)
    assert probe_accuracy(train_linear_probe(x, y, 4, normalize="l2"), xt, yt) < 0.5
    assert knn_accuracy(x, y, xt, yt, 4, normalize="l2") < 0.5
    for norm in ("center", "standardize"):
        probe = train_linear_probe(x, y, 4, normalize=norm)
        assert probe_fit(probe, x, y).accuracy == 1.0
        assert probe_accuracy(probe, xt, yt) >= 0.95
        assert knn_accuracy(x, y, xt, yt, 4, normalize=norm) >= 0.95


def test_knn_centres_with_the_training_mean():
    train = T([[3.0, 1.0], [1.0, 3.0], [2.0, 0.0]])  # mean (2, 4/3)
    labels = T([0, 1, 0])
    test = T([[3.0, 2.0]])
    # Centred: train (1, -1/3), (-1, 5/3), (0, -4/3); test (1, 2/3).
    centred = train - T([2.0, 4.0 / 3.0])
    q = T([1.0, 2.0 / 3.0])
    cos = [float(q @ c / (q.norm() * c.norm())) for c in centred]
    scores = knn_scores(train, labels, test, 2, k=2, temperature=0.5, normalize="center")
    # The two nearest by centred cosine are items 0 (0.614) and 1 (0.048); item 2 (-0.555) is out.
    expected = T([[math.exp(cos[0] / 0.5), math.exp(cos[1] / 0.5)]])
    torch.testing.assert_close(scores, expected)
    # Uncentred (cosines 0.965, 0.789, 0.832) the nearest two are items 0 and 2, both class 0.
    plain = knn_scores(train, labels, test, 2, k=2, temperature=0.5)
    assert plain[0, 1] == 0.0 and plain[0, 0] > 0


def test_probe_command_option_end_to_end(tiny_synthetic, tmp_path, run_cli, capsys):
    common = [
        "probe",
        "--backbone",
        "tiny3d",
        "--backbone-kwargs",
        '{"width": 4}',
        "--data.root",
        str(tiny_synthetic),
        "--clip-len",
        "4",
        "--stride",
        "2",
        "--crop-size",
        "24",
        "--decode-size",
        "32",
        "--clips",
        "1",
        "--crops",
        "1",
        "--train-views",
        "1",
        "--steps",
        "20",
        "--fractions",
        "1.0",
        "--cache-dir",
        str(tmp_path / "feats"),
    ]
    records = {}
    for norm in ("l2", "standardize"):
        options = ["--linear-norm", norm, "--knn-norm", norm, "--out", f"{norm}.json"]
        out = run_cli([*common, *options], tmp_path)
        assert f"linear probe ({norm}) and kNN ({norm})" in out
        records[norm] = json.loads((tmp_path / f"{norm}.json").read_text())
        assert records[norm]["probe"]["linear_norm"] == records[norm]["probe"]["knn_norm"] == norm
    fits = [records[n]["results"]["linear_train_fit"]["1.0"] for n in ("l2", "standardize")]
    assert all(f["loss"] > 0 and 0 <= f["accuracy"] <= 1 for f in fits)
    assert fits[0]["loss"] != fits[1]["loss"]  # the option reached the probe
    # The defaults: the linear probe on standardised features, the kNN on the plain cosine.
    run_cli([*common, "--out", "default.json"], tmp_path)
    default = json.loads((tmp_path / "default.json").read_text())
    assert (default["probe"]["linear_norm"], default["probe"]["knn_norm"]) == ("standardize", "l2")
    assert default["results"]["linear"] == records["standardize"]["results"]["linear"]
    assert default["results"]["knn"] == records["l2"]["results"]["knn"]

    assert main([*common, "--linear-norm", "batchnorm"]) == 2
    assert "batchnorm" in capsys.readouterr().err
