"""SGMSE+ in revsde: the restricted unpickler, official-style Lightning checkpoints, the score wrapper."""
from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from revsde import ScoreModel
from revsde.audio import SpecConfig
from revsde import sde as S
from revsde.nets.ncsnpp import ncsnpp_backbone
from revsde.nets.restricted_pickle import is_unresolved, restricted_load
from revsde.nets.sgmse import SGMSEScore, load_sgmse_checkpoint, sgmse_score_model
from fixtures import SMALL, _save_lightning, _small_net  # noqa: E402


# ---------------------------------------------------------------- the restricted unpickler


def _write_marker(path):
    with open(path, "w") as f:
        f.write("ran")
    return "ran"


class _Payload:
    """Pickles as ``func(*args)``: what a malicious checkpoint does with ``__reduce__``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Sneaky:
    """Pickles as NEWOBJ of this class plus a BUILD whose ``__setstate__`` would write the marker."""

    def __init__(self, path):
        self.path = path

    def __setstate__(self, state):
        _write_marker(state["path"])


def _payloads(marker):
    return {
        "function": (_Payload(_write_marker, str(marker)), f"{__name__}._write_marker"),
        "os.system": (_Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        "exec": (_Payload(exec, f"open({str(marker)!r}, 'w').write('ran')"), "builtins.exec"),
        "instance": (_Sneaky(str(marker)), f"{__name__}._Sneaky"),
    }


@pytest.mark.parametrize("kind", ["function", "os.system", "exec", "instance"])
def test_restricted_load_refuses_code_and_runs_none(tmp_path, kind):
    marker = tmp_path / "marker"
    payload, global_name = _payloads(marker)[kind]
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"x": payload}}, path)
    with pytest.raises(pickle.UnpicklingError, match=f"call or instantiate {global_name}; this loader never"):
        restricted_load(path)
    assert not marker.exists()
    if kind == "function":  # the payload is live: plain torch.load runs it
        torch.load(path, weights_only=False)
        assert marker.read_text() == "ran"


# ---------------------------------------------------------------- official-style Lightning checkpoints


@pytest.fixture(scope="module")
def net():
    return _small_net()


def test_round_trip_prefers_ema(tmp_path, monkeypatch, net):
    path = tmp_path / "model.ckpt"
    _save_lightning(path, monkeypatch, net)
    loaded = load_sgmse_checkpoint(path)
    assert "fakesgmse" not in sys.modules  # nothing was imported
    assert loaded.weights == "ema" and loaded.backbone_name == "ncsnpp" and not loaded.backbone.training
    for (name, p), q in zip(net.named_parameters(), loaded.backbone.parameters()):
        torch.testing.assert_close(q, p + 0.5, rtol=0, atol=0, msg=name)
    assert loaded.backbone.centered is False and loaded.backbone.nf == 8
    assert loaded.sde.config() == {"theta": 2.0, "sigma_min": 0.1, "sigma_max": 1.0, "t_min": 0.04}
    assert loaded.num_steps == 25
    assert loaded.spec == SpecConfig(sample_rate=16000, n_fft=510, hop_length=128, window="hann", spec_factor=0.065,
                                     spec_abs_exponent=0.667, transform="exponent", pad_mode="zero", pad_multiple=64)
    assert loaded.hparams["data_module_cls"] == "fakesgmse.data_module.SpecsDataModule"
    raw = restricted_load(path)
    assert type(raw["hyper_parameters"]) is dict and is_unresolved(raw["hyper_parameters"]["data_module_cls"])

    assert loaded.describe().startswith("SGMSE+ ncsnpp NCSNpp(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1")
    assert "ema weights, OUVE θ=2 σ 0.1→1, t_eps 0.04, N=25" in loaded.describe()

    plain = load_sgmse_checkpoint(path, weights="raw")
    assert plain.weights == "raw"
    for p, q in zip(net.parameters(), plain.backbone.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_missing_ema_falls_back_with_a_warning(tmp_path, monkeypatch, net):
    path = tmp_path / "no_ema.ckpt"
    _save_lightning(path, monkeypatch, net, ema=None)
    with pytest.warns(UserWarning, match="no EMA weights"):
        loaded = load_sgmse_checkpoint(path)
    assert loaded.weights == "raw"
    torch.testing.assert_close(loaded.backbone.output_layer.weight, net.output_layer.weight, rtol=0, atol=0)


def test_trainable_only_ema_takes_fixed_w_from_state_dict(tmp_path, monkeypatch, net):
    path = tmp_path / "ema02.ckpt"
    _save_lightning(path, monkeypatch, net, ema="trainable")
    loaded = load_sgmse_checkpoint(path)
    torch.testing.assert_close(loaded.backbone.all_modules[0].W, net.all_modules[0].W, rtol=0, atol=0)
    torch.testing.assert_close(loaded.backbone.all_modules[1].weight, net.all_modules[1].weight + 0.5)


def test_checkpoint_errors_name_keys_and_counts(tmp_path, monkeypatch, net):
    n = len(net.state_dict())
    path = tmp_path / "wide.ckpt"
    _save_lightning(path, monkeypatch, net, hparams={"nf": 16})  # weights of nf=8, config says 16
    with pytest.raises(ValueError) as err:
        load_sgmse_checkpoint(path)
    msg = str(err.value)
    assert "(state_dict) does not match NCSNpp(nf=16, ch_mult=(1, 2, 2)" in msg and f"expects {n} tensors" in msg
    assert "all_modules.0.W (8,) vs (16,)" in msg and "looks like nf=8" in msg

    state = {k: v for k, v in net.state_dict().items() if not k.startswith("all_modules.5.")}
    state["all_modules.99.weight"] = torch.zeros(1)
    _save_lightning(path, monkeypatch, net, state=state)
    with pytest.raises(ValueError, match=r"missing keys: all_modules\.5\.GroupNorm_0\.weight") as err:
        load_sgmse_checkpoint(path, weights="raw")
    assert "1 unexpected key: all_modules.99.weight" in str(err.value)
    assert f"expects {n} tensors" in str(err.value) and f"the checkpoint has {len(state)}" in str(err.value)

    _save_lightning(path, monkeypatch, net, ema=[torch.zeros(1)] * 10)
    with pytest.raises(ValueError, match=rf"the EMA holds 10 tensors, but NCSNpp\(nf=8.*has {n} parameters"):
        load_sgmse_checkpoint(path)

    _save_lightning(path, monkeypatch, net, extra={"state_dict": OrderedDict(
        [*((f"dnn.{k}", v) for k, v in net.state_dict().items()), ("ema_model.w", torch.ones(1))])})
    with pytest.raises(ValueError, match="1 unexpected key: ema_model.w"):  # only pesq_loss.* is dropped
        load_sgmse_checkpoint(path)

    for hparams, match in [({"sde": "sbve"}, "sde 'sbve' is not available"),
                           ({"backbone": "dcunet"}, "backbone 'dcunet' is not implemented")]:
        _save_lightning(path, monkeypatch, net, hparams=hparams)
        with pytest.raises(ValueError, match=match):
            load_sgmse_checkpoint(path)
    torch.save(net.state_dict(), path)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_sgmse_checkpoint(path)
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw'"):
        load_sgmse_checkpoint(path, weights="state_dict")
    with pytest.raises(ValueError, match="is not a file"):
        load_sgmse_checkpoint(tmp_path / "absent.ckpt")


# ---------------------------------------------------------------- as a revsde ScoreModel


def _spec(seed, shape=(2, 1, 32, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.complex64, generator=g)


def test_score_model_is_minus_the_backbone_at_diffusion_time(net):
    sde = S.OUVESDE()
    model = sgmse_score_model(net, sde)
    assert isinstance(model, ScoreModel) and model.prediction == "score"
    assert list(model.net.state_dict())[:2] == ["dnn.output_layer.weight", "dnn.output_layer.bias"]  # Lightning keys
    x, y, t = _spec(1), _spec(2), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        pred = model(x, t, mu=y)
        direct = net(x, y, t)
    torch.testing.assert_close(pred.score, -direct, rtol=1e-6, atol=1e-6)
    sigma = sde.sigma(t.double()).float()[:, None, None, None]
    torch.testing.assert_close(pred.noise, sigma * direct, rtol=1e-5, atol=1e-6)  # ε = −σ·score
    with pytest.raises(ValueError, match="sde must be an OUVESDE"):
        sgmse_score_model(net, S.VPSDE())
    with pytest.raises(ValueError, match="mu=y"):
        model.net(x, t)


def test_v2_preconditioning_follows_sgmse():
    torch.manual_seed(0)
    dnn = ncsnpp_backbone("ncsnpp_v2", **SMALL)
    sde = S.OUVESDE()
    x, y, t = _spec(3), _spec(4), torch.tensor([0.2, 0.7])
    sigma = sde.sigma(t.double()).float()[:, None, None, None]
    sd = 0.1
    with torch.no_grad():
        c_in = 1 / torch.sqrt(sigma**2 + sd**2)
        f = dnn(c_in * x, c_in * y, t) / sigma  # network_scaling 1/σ
        edm = SGMSEScore(dnn, sde, backbone="ncsnpp_v2", c_in="edm", c_out="edm", c_skip="edm",
                         network_scaling="1/sigma")(x, t, mu=y)
        want = sd**2 / (sigma**2 + sd**2) * x + sigma * sd / torch.sqrt(sd**2 + sigma**2) * f
        torch.testing.assert_close(edm, want, rtol=1e-5, atol=1e-6)
        plain = dnn(x, y, t)
        torch.testing.assert_close(SGMSEScore(dnn, backbone="ncsnpp_v2")(x, t, mu=y), plain)  # +F, no sign flip
        denoiser = SGMSEScore(dnn, sde, backbone="ncsnpp_v2", loss_type="denoiser")(x, t, mu=y)
        torch.testing.assert_close(denoiser, (plain - x) / sigma**2, rtol=1e-5, atol=1e-5)
    assert sgmse_score_model(dnn, sde, backbone="ncsnpp_v2", loss_type="data_prediction").prediction == "data"
    with pytest.raises(ValueError, match="apply to ncsnpp_v2 only"):
        SGMSEScore(dnn, sde, backbone="ncsnpp", c_out="sigma")
    with pytest.raises(ValueError, match="use σ"):
        SGMSEScore(dnn, None, backbone="ncsnpp_v2", c_out="sigma")
    with pytest.raises(ValueError, match="c_skip must be one of"):
        SGMSEScore(dnn, sde, backbone="ncsnpp_v2", c_skip="1")


def test_v2_checkpoint_carries_its_preconditioning(tmp_path, monkeypatch):
    torch.manual_seed(0)
    dnn = ncsnpp_backbone("ncsnpp_v2", **SMALL)
    path = tmp_path / "v2.ckpt"
    _save_lightning(path, monkeypatch, dnn, hparams={"backbone": "ncsnpp_v2", "loss_type": "data_prediction",
                                                      "c_skip": "edm", "c_out": "edm", "centered": True})
    loaded = load_sgmse_checkpoint(path)
    assert loaded.spec.pad_mode == "reflection" and loaded.backbone.time_scaling == "none"
    assert loaded.v2_options["c_skip"] == "edm" and loaded.score_model().prediction == "data"
    _save_lightning(path, monkeypatch, dnn, hparams={"backbone": "ncsnpp_v2", "c_in": "sigma"})
    with pytest.raises(ValueError, match="c_in must be one of '1', 'edm'"):
        load_sgmse_checkpoint(path)
