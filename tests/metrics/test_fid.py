"""FID Inception (pytorch-fid's network, weights file format, features), feature statistics, FD, KID, P/R.

The real weights are not available offline: the weights file is made here from seeded random weights
in the official format (a plain ``torch.save``-d state dict). Agreement with pytorch-fid is pinned by
numbers measured with its own code (``pytorch_fid.inception.InceptionV3([3])``, commit b9c1811 of
mseitzer/pytorch-fid, built on torchvision's Inception-v3 classes) on those seeded weights.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from revsde.metrics.fid import (FeatureExtractor, FeatureStats, Moments, fid, fid_from_features, kid, load_stats,
                                precision_recall, save_stats, stats_of_folder)
from revsde.nets import fid_inception as FI

torch.set_num_threads(1)


def random_fill(net: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights with realistic scales: He-normal convolutions, BN statistics near (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in net.state_dict().items():
            if not value.dtype.is_floating_point:
                continue
            if key.endswith(("running_var", "bn.weight")):
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            elif key.endswith(("running_mean", "bias")):
                value.copy_(0.1 * torch.randn(value.shape, generator=g))
            else:
                value.copy_(torch.randn(value.shape, generator=g) * (2 / value[0].numel()) ** 0.5)
    return net


@pytest.fixture(scope="module")
def seeded_net():
    return random_fill(FI.FIDInceptionV3()).eval()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, seeded_net):
    """The seeded weights in pytorch-fid's file format."""
    path = tmp_path_factory.mktemp("inception") / FI.WEIGHTS_NAME
    torch.save(seeded_net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def loaded(weights_file):
    return FI.load_fid_inception(weights_file)


# ---------------------------------------------------------------- the network against pytorch-fid


def test_state_dict_keys_and_shapes_are_pytorch_fids():
    net = FI.FIDInceptionV3()
    lines = "\n".join(f"{k} {list(v.shape)}" for k, v in net.state_dict().items())
    # Measured on pytorch_fid.inception.fid_inception_v3()'s module (keys in order, shapes): 566 entries,
    # 472 without the BatchNorm num_batches_tracked counters, 23,850,960 parameters.
    assert hashlib.sha256(lines.encode()).hexdigest() == \
        "8ca497103391675d239b6cbe936a080934f935dfd57b70343674200035f2c5e8"
    assert len(net.state_dict()) == 566
    assert sum(not k.endswith("num_batches_tracked") for k in net.state_dict()) == 472
    assert sum(p.numel() for p in net.parameters()) == 23_850_960


def test_features_match_pytorch_fid_in_float64(seeded_net):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        f = seeded_net.double()(x)
    seeded_net.float()
    # pytorch-fid's InceptionV3([3]) in float64 on the same weights and images (this net agreed to 0.0).
    assert f.shape == (2, 2048)
    torch.testing.assert_close(f.sum(1), torch.tensor([4040.2170330124345, 4096.678670968566], dtype=torch.float64),
                               rtol=1e-9, atol=0)
    torch.testing.assert_close(f.square().sum(1), torch.tensor([23693.285182527623, 24167.728363261132],
                                                               dtype=torch.float64), rtol=1e-9, atol=0)
    torch.testing.assert_close(f[:, :4], torch.tensor(
        [[0.004190443357191071, 0.0157816307694904, 0.04063769694358508, 7.253998703489628],
         [0.0, 0.003964577115429525, 0.02869386496201386, 6.995980325551796]], dtype=torch.float64),
        rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- weights files


def test_official_format_file_loads_and_gives_pool3_features(loaded, seeded_net, weights_file):
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.weights_sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    x = torch.rand(3, 3, 24, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f = loaded(x)
        assert torch.equal(f, seeded_net(x))
    assert f.shape == (3, 2048) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and (f >= 0).all() and f.std() > 0  # averages of ReLU outputs


def test_torch_fidelity_key_set_without_batch_counters_loads(tmp_path, seeded_net):
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in seeded_net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    net = FI.load_fid_inception(path)
    for (k, a), b in zip(net.state_dict().items(), seeded_net.state_dict().values()):
        assert torch.equal(a, b), k


def test_weights_path_from_argument_or_environment(monkeypatch, weights_file, tmp_path):
    monkeypatch.setenv(FI.ENV_VAR, str(weights_file))
    assert FI.weights_path() == weights_file
    other = tmp_path / "other.pth"
    other.write_bytes(b"")
    assert FI.weights_path(other) == other  # an argument wins over the environment


def test_environment_variable_loads(monkeypatch, weights_file, loaded):
    monkeypatch.setenv(FI.ENV_VAR, str(weights_file))
    net = FI.load_fid_inception()
    assert net.weights_sha256 == loaded.weights_sha256


def test_missing_weights_say_where_to_get_them(monkeypatch, tmp_path):
    monkeypatch.delenv(FI.ENV_VAR, raising=False)
    for call in (lambda: FI.load_fid_inception(), lambda: FI.load_fid_inception(tmp_path / "absent.pth")):
        with pytest.raises(FileNotFoundError) as error:
            call()
        message = str(error.value)
        assert FI.WEIGHTS_URL in message and FI.ENV_VAR in message and "--inception-weights" in message
    monkeypatch.setenv(FI.ENV_VAR, str(tmp_path / "absent.pth"))
    with pytest.raises(FileNotFoundError, match=r"absent\.pth.*\$REVSDE_INCEPTION_WEIGHTS"):
        FI.load_fid_inception()


def test_wrong_file_is_an_error_listing_keys(tmp_path):
    path = tmp_path / "torchvision_like.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000),
                "AuxLogits.fc.weight": torch.zeros(1000, 768)}, path)
    with pytest.raises(ValueError) as error:
        FI.load_fid_inception(path)
    message = str(error.value)
    assert "missing keys: Conv2d_1a_3x3.conv.weight" in message
    assert "1 unexpected key: AuxLogits.fc.weight" in message
    assert "fc.weight (1000, 2048) vs (1008, 2048)" in message and "fc.bias (1000,) vs (1008,)" in message
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch state dict file"):
        FI.load_fid_inception(junk)


def test_labels_fid_only_for_the_official_weights(loaded):
    assert FI.FIDInceptionV3().label == "FD-inception-v3-random-init"
    assert loaded.label == f"FD-inception-v3-{loaded.weights_sha256[:8]}"
    official = FI.FIDInceptionV3()
    official.weights_sha256 = FI.OFFICIAL_SHA256
    assert official.label == "FID"
    extractor = FeatureExtractor(nn.Linear(4, 2), "cifar10-classifier")
    assert extractor.label == "FD-cifar10-classifier"
    for name in ("FID", "fid-small", "inception-v3", ""):
        with pytest.raises(ValueError, match="does not claim to be the FID Inception"):
            FeatureExtractor(nn.Linear(4, 2), name)


# ---------------------------------------------------------------- statistics and the Fréchet distance


def test_feature_stats_streaming_equals_one_shot_and_merges():
    x = torch.randn(101, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 5
    stats = FeatureStats()
    for part in x.split([1, 40, 60]):
        stats.update(part)
    mean, cov = x.mean(0), torch.from_numpy(np.cov(x.numpy(), rowvar=False))
    assert stats.count == 101 and stats.mean.dtype == torch.float64
    torch.testing.assert_close(stats.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(stats.cov, cov, rtol=0, atol=1e-11)
    merged = FeatureStats().update(x[:50]) + FeatureStats().update(x[50:])
    assert merged.count == 101
    torch.testing.assert_close(merged.cov, cov, rtol=0, atol=1e-11)
    rebuilt = FeatureStats.from_tensors(*stats.tensors())  # what all_reduce would hand back on one process
    assert rebuilt.count == 101 and torch.equal(rebuilt.cov, stats.cov)
    with pytest.raises(ValueError, match="different feature spaces"):
        FeatureStats(label="FID").update(x) + FeatureStats(label="FD-small").update(x)


def test_fid_is_zero_for_identical_stats_and_the_closed_form_for_gaussians():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stats = FeatureStats(label="FID").update(x)
    assert fid(stats, stats) == pytest.approx(0, abs=1e-10)
    assert fid_from_features(x, x) == pytest.approx(0, abs=1e-10)
    # Diagonal covariances: FD = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2.
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = (m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    assert fid(Moments(m1, torch.diag(a)), (m2, torch.diag(b))) == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError, match="different feature spaces"):
        fid(stats, FeatureStats(label="FD-small").update(x))


def test_npz_round_trip_in_pytorch_fids_layout(tmp_path):
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stats = FeatureStats(label="FD-small").update(x)
    path = tmp_path / "ref" / "stats.npz"
    save_stats(path, stats.mean, stats.cov, label=stats.label)
    with np.load(path) as data:  # how pytorch-fid reads it
        mu, sigma = data["mu"][:], data["sigma"][:]
    assert mu.dtype == sigma.dtype == np.float64 and np.array_equal(mu, stats.mean.numpy())
    loaded = load_stats(path)
    assert torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.cov, stats.cov) and loaded.label == "FD-small"
    assert fid(stats, loaded) == pytest.approx(0, abs=1e-10)
    np.savez(tmp_path / "plain.npz", mu=mu, sigma=sigma)  # a pytorch-fid file: no label
    assert load_stats(tmp_path / "plain.npz").label is None
    np.savez(tmp_path / "wrong.npz", mean=mu)
    with pytest.raises(ValueError, match="no mu or sigma"):
        load_stats(tmp_path / "wrong.npz")
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "absent.npz")
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temporary file left


def _write_images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for i, (h, w) in enumerate(sizes):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        arrays.append(pixels)
    (folder / "notes.txt").write_text("not an image")
    return arrays


def test_stats_of_folder_reads_images_in_batches(tmp_path):
    arrays = _write_images(tmp_path, [(8, 8), (8, 8), (6, 10), (8, 8), (8, 8)])
    Image.fromarray(arrays[0]).convert("L").save(tmp_path / "zgray.jpg")  # greyscale JPEG, read as RGB
    extractor = FeatureExtractor(nn.Identity(), "pixel-mean", features=lambda x: x.mean((2, 3)))
    expected = [a.reshape(-1, 3).mean(0) / 255 for a in arrays]
    with Image.open(tmp_path / "zgray.jpg") as image:
        expected.append(np.asarray(image.convert("RGB")).reshape(-1, 3).mean(0) / 255)
    one_shot = FeatureStats().update(np.stack(expected))
    for batch in (1, 2, 50):
        stats = stats_of_folder(tmp_path, extractor, batch=batch, progress=False)
        assert stats.count == 6 and stats.label == "FD-pixel-mean"
        torch.testing.assert_close(stats.mean, one_shot.mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(stats.cov, one_shot.cov, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="`label` property"):
        stats_of_folder(tmp_path, lambda x: x.mean((2, 3)), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        stats_of_folder(empty, extractor, progress=False)


def test_stats_of_folder_with_the_inception_smoke(tmp_path, loaded):  # smoke: shapes and label only
    _write_images(tmp_path, [(16, 16), (16, 16)])
    stats = stats_of_folder(tmp_path, loaded, batch=2, progress=False)
    assert stats.count == 2 and stats.dim == 2048 and stats.label == loaded.label
    stats.update(torch.zeros(1, 2048))  # the sums are ordinary tensors, not inference-mode ones
    assert stats.count == 3


# ---------------------------------------------------------------- KID, precision and recall


def test_kid_is_the_unbiased_polynomial_mmd():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)

    def k(a, b):
        return (a @ b / 3 + 1) ** 3
    m = 6  # the U-statistic written out pair by pair
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = kid(x, y, subsets=3, subset_size=6, generator=g)
    assert mean == pytest.approx(float(within - 2 * across), rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_kid_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g)
    same, _ = kid(x, y, subsets=20, subset_size=500, generator=g)
    shifted, _ = kid(x, y + 0.5, subsets=20, subset_size=500, generator=g)
    # Over seeds 4-8: |same| < 0.007 and shifted ~ 1.0-1.14 (MMD^2 of a 0.5 shift in 8-d).
    assert abs(same) < 0.01 and shifted > 0.5
    with pytest.raises(ValueError, match="exceeds the smaller set"):
        kid(x, y[:100], subset_size=200)


def test_precision_recall_identical_disjoint_and_collapsed():
    g = torch.Generator().manual_seed(5)
    real = torch.randn(300, 4, generator=g, dtype=torch.float64)
    assert precision_recall(real, real.clone(), chunk=64) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    collapsed = 0.05 * torch.randn(300, 4, generator=g, dtype=torch.float64)  # mode collapse at the centre
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.2
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real[:3], real, k=3)

