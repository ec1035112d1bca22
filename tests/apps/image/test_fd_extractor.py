"""The FD-digits feature extractor: its interface to ``revsde.metrics.fid``, the committed weights'
accuracy on the real digits, and the committed reference statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revsde.apps.image.data import digit_labels, digits
from revsde.metrics.fid import FeatureStats, extractor_label, fid, load_stats
from revsde.nets import digits_classifier as dc


@pytest.fixture(scope="module")
def extractor():
    return dc.load_fd_extractor()


@pytest.fixture(scope="module")
def real():
    return digits(16), digit_labels()


def test_the_extractor_is_named_fd_digits_and_maps_images_to_64_features(extractor):
    assert extractor.name == "digits" and extractor.label == "FD-digits" and extractor_label(extractor) == "FD-digits"
    assert not extractor.training
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        f = extractor(x)
    assert f.shape == (5, dc.FEATURE_DIM) and f.dtype == torch.float32  # smoke test
    assert not any(p.requires_grad for p in extractor.parameters())


def test_rgb_images_in_zero_one_give_the_same_features_as_the_model_space(extractor, real):
    """``stats_of_folder`` hands (B, 3, H, W) RGB in [0, 1]: a grey digit so read is the same digit."""
    x = real[0][:16]
    rgb = ((x + 1) / 2).expand(-1, 3, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(extractor(rgb), extractor(x), rtol=1e-5, atol=1e-5)
        assert extractor(torch.nn.functional.interpolate(rgb, size=32, mode="nearest")).shape == (16, 64)


def test_bad_inputs_are_refused(extractor, tmp_path):
    with pytest.raises(ValueError, match=r"FD-digits takes images \(B, 1, H, W\)"):
        extractor(torch.zeros(2, 2, 16, 16))
    with pytest.raises(FileNotFoundError, match="train_fd_extractor.py"):
        dc.load_fd_extractor(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "revsde.image/1"})
    with pytest.raises(ValueError, match="is not an FD-digits classifier"):
        dc.load_fd_extractor(tmp_path / "other.safetensors")


def test_committed_weights_classify_the_real_digits(real):
    x, y = real
    net = dc.load_classifier()
    with torch.no_grad():
        predicted = net(x).argmax(1)
    accuracy = float((predicted == y).double().mean())
    assert accuracy >= 0.95, accuracy
    per_class = [float((predicted[y == c] == c).double().mean()) for c in range(10)]
    assert min(per_class) >= 0.9, per_class


def test_reference_stats_are_the_features_of_all_digits(extractor, real):
    ref = load_stats(dc.DEFAULT_REFERENCE)
    assert ref.label == "FD-digits" and ref.mean.shape == (64,) and ref.cov.shape == (64, 64)
    with torch.no_grad():
        stats = FeatureStats(label=extractor.label).update(extractor(real[0]))
    assert stats.count == 1797
    torch.testing.assert_close(stats.mean, ref.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(stats.cov, ref.cov, rtol=0, atol=1e-4)
    # the features are standardised over these digits: mean 0, unit variance per dimension
    assert float(ref.mean.abs().max()) < 1e-4 and np.allclose(ref.cov.diagonal().numpy(), 1, atol=1e-4)
    assert fid(stats, ref) < 1e-6


def test_fd_digits_tells_a_class_imbalance_from_the_real_digits(extractor, real):
    """All 1797 digits are at ~0 from the reference; the same number of images of two classes only
    is far (the number can fail: a feature space blind to the class would not separate them)."""
    x, y = real
    ref = load_stats(dc.DEFAULT_REFERENCE)
    few = x[(y == 0) | (y == 1)]
    with torch.no_grad():
        fd_few = fid(FeatureStats(label="FD-digits").update(extractor(few)), ref)
        half = FeatureStats(label="FD-digits").update(extractor(x[::2]))
    assert fid(half, ref) < 1.0 < 20 < fd_few
