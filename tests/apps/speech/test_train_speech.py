"""Training the built-in speech model: SGMSE+'s loss written out by hand, its noise draws, the
per-example normalisation, resuming bit for bit, the ``revsde train speech`` command and the export."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from revsde.apps.speech import model as W
from revsde.apps.speech import train as T
from revsde.apps.trainer import load_checkpoint
from revsde.audio.features import SGMSE_16K, from_spec, to_spec
from revsde.cli import main
from revsde.model import Prediction, ScoreModel
from revsde.sde import OUVESDE

from fixtures import assert_same_weights

TINY_NET = {"nf": 8, "ch_mult": (1, 1, 1, 1, 1), "num_res_blocks": 1, "attn_resolutions": (), "image_size": 256,
            "time_scaling": "none"}


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory):
    """The espeak-ng cache of 8 training utterances, synthesised once."""
    from revsde.apps.speech.data import load_corpus

    root = tmp_path_factory.mktemp("speech_corpus")
    load_corpus("train", 8, root, progress=False)
    return root


class StandIn(nn.Module):
    """A context-free stand-in ``net(x, time, mu=y)``: its raw output is whatever the prediction says."""

    def forward(self, x, time, mu=None):
        t = torch.as_tensor(time, dtype=x.real.dtype).reshape(-1, 1, 1, 1)
        return (0.3 * x - 0.2j * mu) * (1 + t) + 0.1


def gen(seed):
    return torch.Generator().manual_seed(seed)


def spectrograms(b=3, f=6, n=5, seed=0):
    g = gen(seed)
    x0 = torch.randn(b, 1, f, n, generator=g, dtype=torch.complex128)
    return x0, x0 + 0.5 * torch.randn(b, 1, f, n, generator=g, dtype=torch.complex128)


def sgmse_std(t, theta=1.5, sigma_min=0.05, sigma_max=0.5):
    """SGMSE's ``OUVESDE._std``, as its source writes it."""
    logsig = math.log(sigma_max / sigma_min)
    return torch.sqrt(sigma_min**2 * torch.exp(-2 * theta * t) * (torch.exp(2 * (theta + logsig) * t) - 1) * logsig
                      / (theta + logsig))


# --- the loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["score", "velocity"])
def test_sgmse_loss_is_sgmse_formula(prediction):
    """``mean_b ½ Σ |σ_t s + z|²`` at SGMSE's ``t ~ U[t_eps, 1]``, ``x_t = e^{−θt} x0 + (1 − e^{−θt}) y + σ_t z``,
    σ_t as SGMSE's source writes it; a velocity net's score through ``Prediction``."""
    sde = OUVESDE()
    x0, y = spectrograms()
    model = ScoreModel(StandIn(), sde, prediction=prediction)
    got = T.sgmse_loss(model, x0, y, gen(5), 0.03)
    # the same draws, in the same order, from the same seed
    g = gen(5)
    t = 0.03 + (1 - 0.03) * torch.rand(3, generator=g, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    tt = t.reshape(-1, 1, 1, 1)
    x_t = torch.exp(-1.5 * tt) * x0 + (1 - torch.exp(-1.5 * tt)) * y + sgmse_std(tt) * z
    raw = StandIn()(x_t, t, mu=y)
    score = raw if prediction == "score" else Prediction("velocity", raw, x_t, t, sde, mu=y).score
    expected = (0.5 * (sgmse_std(tt) * score + z).abs().pow(2).sum((1, 2, 3))).mean()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("loss", ["denoiser", "data"])
def test_denoiser_and_data_losses_are_their_formulas(loss):
    """``denoiser``: ``½ Σ |D − μ_t|²`` with ``D = x_t + σ_t² s`` (SGMSE's denoiser objective, weight 1);
    ``data``: ``½ Σ |x̂_0 − x_0|²`` with ``x̂_0`` from Tweedie, ``(D − (1 − e^{−θt}) y) / e^{−θt}``."""
    sde = OUVESDE()
    x0, y = spectrograms(seed=2)
    model = ScoreModel(StandIn(), sde, prediction="score")
    got = T.sgmse_loss(model, x0, y, gen(7), 0.03, loss)
    g = gen(7)
    t = 0.03 + (1 - 0.03) * torch.rand(3, generator=g, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    tt = t.reshape(-1, 1, 1, 1)
    a = torch.exp(-1.5 * tt)
    mean = a * x0 + (1 - a) * y
    x_t = mean + sgmse_std(tt) * z
    d = x_t + sgmse_std(tt) ** 2 * StandIn()(x_t, t, mu=y)
    err = d - mean if loss == "denoiser" else (d - (1 - a) * y) / a - x0
    expected = (0.5 * err.abs().pow(2).sum((1, 2, 3))).mean()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


def test_an_unknown_loss_is_refused():
    x0, y = spectrograms()
    with pytest.raises(ValueError, match="loss must be one of sgmse, denoiser, data"):
        T.sgmse_loss(ScoreModel(StandIn(), OUVESDE(), prediction="score"), x0, y, gen(0), 0.03, "l1")


def test_the_true_score_has_zero_loss():
    """The denoising-score-matching optimum ``s = −(x_t − mean)/σ_t²`` makes ``σ_t s + z`` vanish."""
    x0, y = spectrograms(seed=1)

    class Oracle(nn.Module):
        def forward(self, x, time, mu=None):
            t = torch.as_tensor(time, dtype=torch.float64).reshape(-1, 1, 1, 1)
            mean = torch.exp(-1.5 * t) * x0 + (1 - torch.exp(-1.5 * t)) * mu
            return -(x - mean) / sgmse_std(t) ** 2

    loss = T.sgmse_loss(ScoreModel(Oracle(), OUVESDE(), prediction="score"), x0, y, gen(0), 0.03)
    assert float(loss) < 1e-20
    wrong = T.sgmse_loss(ScoreModel(StandIn(), OUVESDE(), prediction="score"), x0, y, gen(0), 0.03)
    assert float(wrong) > 1


def test_loss_draws_times_in_t_eps_to_1_and_circular_complex_noise_of_unit_power(monkeypatch):
    seen = []
    marginal = OUVESDE.marginal

    def spy(self, x0, t, mu=None):
        seen.append(t)
        return marginal(self, x0, t, mu)

    monkeypatch.setattr(OUVESDE, "marginal", spy)
    x0 = torch.zeros(512, 1, 16, 16, dtype=torch.complex64)

    class Noise(nn.Module):  # outputs the noise it was given: x_t = σ_t z when x0 = y = 0
        def forward(self, x, time, mu=None):
            return x / sgmse_std(torch.as_tensor(time, dtype=torch.float64).reshape(-1, 1, 1, 1)).to(x.real.dtype)

    model = ScoreModel(Noise(), OUVESDE(), prediction="noise")
    captured = []
    call = ScoreModel.__call__
    monkeypatch.setattr(ScoreModel, "__call__", lambda self, x, t, mu=None: captured.append(x) or call(self, x, t, mu))
    T.sgmse_loss(model, x0, x0, gen(0), 0.03)
    t, = seen
    z = captured[0] / sgmse_std(t.reshape(-1, 1, 1, 1)).to(torch.float32)
    assert z.dtype == torch.complex64 and z.shape == x0.shape
    n = z.numel()  # 131072: |z|² ~ Exp(1) has standard error 1/√n = 0.003 on its mean
    power = z.abs().pow(2).double()
    assert abs(float(power.mean()) - 1) < 0.015
    assert abs(float(z.real.double().var()) - 0.5) < 0.01 and abs(float(z.imag.double().var()) - 0.5) < 0.01
    assert abs(complex(z.to(torch.complex128).pow(2).mean())) < 5 / math.sqrt(n)  # circular: E z² = 0
    assert t.dtype == torch.float64 and t.shape == (512,)
    assert float(t.min()) >= 0.03 and float(t.max()) <= 1
    assert abs(float(t.mean()) - (1 + 0.03) / 2) < 0.04  # uniform: std 0.28/√512 = 0.012


def test_t_high_draws_that_fraction_near_1_and_zero_draws_as_before():
    """``t_high = 0`` makes exactly the uniform draws (the stage-1 run's); ``t_high = p`` puts a fraction
    ``p`` at U[0.9, 1], so P(t ≥ 0.9) = p + (1 − p)·0.1/0.97."""
    plain = 0.03 + 0.97 * torch.rand(1000, generator=gen(3), dtype=torch.float64)
    assert torch.equal(T.sample_times(1000, gen(3), 0.03, 1.0), plain)
    assert torch.equal(T.sample_times(1000, gen(3), 0.03, 1.0, 0.0), plain)
    n = 40000
    t = T.sample_times(n, gen(4), 0.03, 1.0, 0.5)
    assert t.dtype == torch.float64 and float(t.min()) >= 0.03 and float(t.max()) <= 1
    expected = 0.5 + 0.5 * 0.1 / 0.97  # 0.5515; standard error 0.0025
    assert abs(float((t >= 0.9).double().mean()) - expected) < 0.012
    below = t[t < 0.9]  # only the uniform half lands here, uniformly
    assert abs(float(below.mean()) - (0.03 + 0.9) / 2) < 0.01
    assert torch.equal(T.sample_times(8, gen(5), 0.03, 1.0, 1.0) >= 0.9, torch.ones(8, dtype=torch.bool))


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True, float("nan")])
def test_bad_t_high_is_refused(bad):
    with pytest.raises(ValueError, match=r"t_high is the fraction of examples drawn near t = 1: a number in \[0, 1\]"):
        T.check_t_high(bad)


def test_the_loss_uses_t_high():
    sde = OUVESDE()
    x0, y = spectrograms()
    model = ScoreModel(StandIn(), sde, prediction="velocity")
    assert not torch.equal(T.sgmse_loss(model, x0, y, gen(5), 0.03, "data", 0.5),
                           T.sgmse_loss(model, x0, y, gen(5), 0.03, "data"))
    torch.testing.assert_close(T.sgmse_loss(model, x0, y, gen(5), 0.03, "data", 0.0),
                               T.sgmse_loss(model, x0, y, gen(5), 0.03, "data"), rtol=0, atol=0)


@pytest.mark.parametrize("device, message", [
    ("mps", "device must be cpu or cuda"), ("gpu0", "unknown device 'gpu0'; e.g. cpu, cuda, cuda:1"),
    (3.5, "unknown device 3.5; e.g. cpu, cuda")])
def test_bad_devices_are_refused(device, message):
    with pytest.raises(ValueError, match=message):
        T.check_device(device)
    assert T.check_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="device 'cuda' asked for, but this torch build sees no CUDA device"):
        T.check_device("cuda")


# --- the features -------------------------------------------------------------------------------
def test_spectrogram_pair_normalises_each_example_by_its_noisy_peak():
    g = gen(2)
    clean = 0.3 * torch.randn(3, 4096, generator=g)
    noisy = clean + 0.1 * torch.randn(3, 4096, generator=g)
    x0, y = T.spectrogram_pair(clean, noisy)
    assert x0.shape == y.shape == (3, 1, 256, 33) and x0.is_complex()
    norm = noisy.abs().amax(1, keepdim=True)
    torch.testing.assert_close(x0, to_spec(clean / norm))
    torch.testing.assert_close(y, to_spec(noisy / norm))
    # scale invariance, per example
    for scale in (torch.full((3, 1), 7.0), torch.tensor([[7.0], [0.01], [1.0]])):
        xs, ys = T.spectrogram_pair(clean * scale, noisy * scale)
        torch.testing.assert_close(xs, x0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ys, y, rtol=1e-5, atol=1e-6)
    # the noisy waveform behind y peaks at exactly 1
    back = from_spec(y, 4096)
    torch.testing.assert_close(back.abs().amax(-1).reshape(3).double(), torch.ones(3, dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_speech_nets_need_the_noisy_spectrogram():
    net = T.SpeechNet(T.build_net(TINY_NET))
    x = torch.zeros(1, 1, 256, 64, dtype=torch.complex64)
    with pytest.raises(ValueError, match="conditioned on the noisy spectrogram"):
        net(x, 0.5)
    assert net(x, 0.5, mu=x).shape == x.shape


# --- the loop -----------------------------------------------------------------------------------
def _train(tmp_path, name, corpus_root, **kw):
    args = dict(steps=4, batch=2, frames=64, corpus_size=8, corpus_root=corpus_root, net_config=TINY_NET,
                checkpoint_every=2, log_every=1, progress=False, threads=None)
    args.update(kw)
    with torch.random.fork_rng(devices=[]):
        return T.train_speech(tmp_path / name, **args)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, corpus_root):
    full = _train(tmp_path, "full", corpus_root)
    part = _train(tmp_path, "split", corpus_root, stop_at=3)  # off the checkpoint_every grid
    assert part.interrupted and part.step == 3
    mid = load_checkpoint(part.checkpoint)
    rest = _train(tmp_path, "split", corpus_root)
    assert not rest.interrupted and rest.step == full.step == 4
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(rest.checkpoint)
    assert_same_weights(a, b)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    # the data's numpy generator is saved and restored: it moved between step 3 and 4, and ends equal
    pairs = [json.loads(s["extra"]["pairs"]["state"]) for s in (mid, a, b)]
    assert pairs[1] == pairs[2] and pairs[0] != pairs[1]
    log = [json.loads(line) for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and [r["loss"] for r in log] == [r["loss"] for r in ref]
    assert all(math.isfinite(r["loss"]) for r in log)


def test_resuming_with_another_total_continues_the_cosine_on_it_and_records_it(tmp_path, corpus_root):
    from revsde.apps.trainer import cosine

    _train(tmp_path, "run", corpus_root, steps=8, stop_at=2)
    assert "lr_history" not in load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    _train(tmp_path, "run", corpus_root, steps=8, stop_at=3)  # the same total: nothing to record
    assert "lr_history" not in load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    _train(tmp_path, "run", corpus_root, steps=6, stop_at=4)
    _train(tmp_path, "run", corpus_root, steps=5)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 5 and state["config"]["lr_history"] == [[0, 8], [3, 6], [4, 5]]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    lr, floor = 5e-4, 1e-6 / 5e-4
    expected = [cosine(8, floor)(s) for s in (1, 2, 3)] + [cosine(6, floor)(4), cosine(5, floor)(5)]
    assert [r["lr"] for r in log] == pytest.approx([lr * f for f in expected], rel=1e-12)
    assert W.export_weights(state, tmp_path / "w.safetensors") and \
        W.read_config(tmp_path / "w.safetensors")["lr_history"] == [[0, 8], [3, 6], [4, 5]]


def test_the_data_generator_matters_for_resuming(tmp_path, corpus_root, monkeypatch):
    """Without the numpy state in the checkpoint the resumed run draws other crops and diverges: the
    resume test above would notice a missing ``extra``."""
    full = _train(tmp_path, "full", corpus_root, steps=2, checkpoint_every=1)
    _train(tmp_path, "split", corpus_root, steps=2, checkpoint_every=1, stop_at=1)
    monkeypatch.setattr(T._NumpyRng, "load_state_dict", lambda self, state: None)  # forget the data position
    rest = _train(tmp_path, "split", corpus_root, steps=2, checkpoint_every=1)
    a, b = load_checkpoint(full.checkpoint)["ema"], load_checkpoint(rest.checkpoint)["ema"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings(tmp_path, corpus_root):
    _train(tmp_path, "run", corpus_root, steps=1)
    for change in ({"lr": 1e-3}, {"prediction": "score"}, {"batch": 3}, {"seed": 1},
                   {"net_config": {**TINY_NET, "nf": 16}}):
        with pytest.raises(ValueError, match="was trained with other settings") as error:
            _train(tmp_path, "run", corpus_root, steps=2, **change)
        assert "--no-resume" in str(error.value)
    again = _train(tmp_path, "run", corpus_root, steps=1, lr=1e-3, resume=False)  # afresh
    assert again.step == 1 and load_checkpoint(again.checkpoint)["config"]["lr"] == 1e-3


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 100}, "frames must be a multiple of 64"),
    ({"prediction": "eps"}, "prediction must be one of score, noise, data, velocity"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"batch": 2.5}, "batch must be a positive integer"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, message):
    args = {"steps": 1, "corpus_root": tmp_path / "corpus", "progress": False, "threads": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        T.train_speech(tmp_path / "out", **args)
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "out").exists()


def test_a_fine_tune_starts_from_the_ema_weights_and_records_where_they_came_from(tmp_path, corpus_root):
    base = _train(tmp_path, "base", corpus_root, steps=2)
    start = _train(tmp_path, "ft0", corpus_root, steps=3, init_from=base.checkpoint, t_high=0.5, stop_at=0)
    base_state, first = load_checkpoint(base.checkpoint), load_checkpoint(start.checkpoint)
    assert first["step"] == 0
    for k, v in base_state["ema"].items():  # the net and its EMA begin at the base's EMA, not its raw weights
        assert torch.equal(first["model"][k], v) and torch.equal(first["ema"][k], v)
    assert any(not torch.equal(base_state["model"][k], v) for k, v in base_state["ema"].items())
    init = first["config"]["init"]
    assert init["from"] == base.checkpoint.as_posix() and init["trained_steps"] == 2 and init["lr"] == 5e-4
    assert init["t_high"] == 0.0 and init["init"] is None and first["config"]["t_high"] == 0.5
    # it resumes with the same settings, and only with them
    done = _train(tmp_path, "ft0", corpus_root, steps=3, init_from=base.checkpoint, t_high=0.5)
    assert done.step == 3 and not done.interrupted
    for change in ({"init_from": None, "t_high": 0.5}, {"init_from": base.checkpoint, "t_high": 0.25}):
        with pytest.raises(ValueError, match="was trained with other settings"):
            _train(tmp_path, "ft0", corpus_root, steps=4, **change)
    # an exported file starts a fine-tune too, and the export keeps the provenance
    exported = W.export_weights(done.checkpoint, tmp_path / "ft.safetensors")
    assert W.read_config(exported)["init"]["trained_steps"] == 2
    again = _train(tmp_path, "ft1", corpus_root, steps=1, init_from=exported, stop_at=0)
    ema = load_checkpoint(done.checkpoint)["ema"]
    assert all(torch.equal(load_checkpoint(again.checkpoint)["model"][k], v) for k, v in ema.items())
    assert load_checkpoint(again.checkpoint)["config"]["init"]["init"]["trained_steps"] == 2  # the chain


def test_steps_text_counts_every_stage():
    assert W.steps_text({"trained_steps": 11500, "init": None}) == "11500 steps"
    assert W.steps_text({"trained_steps": 11500}) == "11500 steps"
    tuned = {"trained_steps": 5000, "init": {"trained_steps": 11500, "init": None}}
    assert W.steps_text(tuned) == "16500 steps (11500, then a 5000-step fine-tune)"
    twice = {"trained_steps": 100, "init": tuned}
    assert W.steps_text(twice) == "16600 steps (11500, then a 5000-step fine-tune, then a 100-step fine-tune)"


def test_a_fine_tune_refuses_an_unfit_start(tmp_path, corpus_root):
    base = _train(tmp_path, "base", corpus_root, steps=1)
    with pytest.raises(ValueError, match=r"has other settings than this run \{'net'"):
        _train(tmp_path, "ft", corpus_root, init_from=base.checkpoint, net_config={**TINY_NET, "nf": 16})
    with pytest.raises(ValueError, match=r"other settings than this run \{'prediction': \('velocity', 'score'\)"):
        _train(tmp_path, "ft", corpus_root, init_from=base.checkpoint, prediction="score")
    with pytest.raises(ValueError, match="no such file"):
        _train(tmp_path, "ft", corpus_root, init_from=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a training checkpoint"):
        _train(tmp_path, "ft", corpus_root, init_from=tmp_path / "junk.pt")
    state = load_checkpoint(base.checkpoint)
    torch.save({**state, "config": {**state["config"], "format": "revsde.restore/1"}}, tmp_path / "restore.pt")
    with pytest.raises(ValueError, match="is a 'revsde.restore/1' checkpoint, not a speech model"):
        _train(tmp_path, "ft", corpus_root, init_from=tmp_path / "restore.pt")
    assert not (tmp_path / "ft").exists()


def test_checkpoints_from_before_t_high_init_and_noises_resume(tmp_path, corpus_root):
    """A run saved before ``t_high``, ``init`` and ``noises`` existed (the built-in's stage 1) resumes as
    t_high 0 on the default mix, and a fine-tune of it reads its stage as such."""
    _train(tmp_path, "old", corpus_root, steps=2, stop_at=1)
    path = tmp_path / "old" / "last.pt"
    state = load_checkpoint(path)
    old = {k: v for k, v in state["config"].items() if k not in ("t_high", "init", "noises")}
    torch.save({**state, "config": old}, path)
    assert _train(tmp_path, "old", corpus_root, steps=2).step == 2
    for change in ({"t_high": 0.5}, {"noises": ("white", "tones")}):
        with pytest.raises(ValueError, match="was trained with other settings"):
            _train(tmp_path, "old", corpus_root, steps=3, **change)
    state = load_checkpoint(path)  # the resumed run saved today's config: make it old again
    torch.save({**state, "config": {k: v for k, v in state["config"].items() if k in old}}, path)
    tuned = _train(tmp_path, "ft", corpus_root, steps=1, init_from=path, noises=("white", "tones"))
    config = load_checkpoint(tuned.checkpoint)["config"]
    assert "noises" not in config["init"]  # the start's config as it was saved
    first, second = W.training_stages(config)
    assert first["noises"] == list(T.DEFAULT_NOISES) and first["t_high"] == 0.0
    assert second["noises"] == ["white", "tones"]


def test_the_noise_mix_is_recorded_and_resumes_only_unchanged(tmp_path, corpus_root):
    from revsde.apps.speech.noise import TRAIN_NOISES

    assert T.DEFAULT_NOISES == TRAIN_NOISES
    run = _train(tmp_path, "run", corpus_root, steps=2, stop_at=1, noises="white, tones")
    assert load_checkpoint(run.checkpoint)["config"]["noises"] == ["white", "tones"]
    with pytest.raises(ValueError, match="was trained with other settings {'noises'"):
        _train(tmp_path, "run", corpus_root, steps=2)
    assert _train(tmp_path, "run", corpus_root, steps=2, noises=("white", "tones")).step == 2


@pytest.mark.parametrize("noises, message", [
    (("white", "engine"), "noises 'engine' is held out for the test set"),
    ("rain", "noises 'rain' is unknown: give distinct names from white, pink, brown, babble, hum, bursts, hvac, tones"),
    (("white", "white"), "noises repeats a kind"),
    ((), "noises is empty"),
])
def test_bad_noise_mixes_are_refused(tmp_path, noises, message):
    with pytest.raises(ValueError, match=message):
        T.train_speech(tmp_path / "out", 1, noises=noises, corpus_root=tmp_path / "corpus", progress=False,
                       threads=None)
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "out").exists()


def test_a_finished_run_s_checkpoint_is_left_as_it_was(tmp_path, corpus_root):
    """Rerunning a finished stage (the built-in's script does, before its next stage) saves nothing."""
    done = _train(tmp_path, "run", corpus_root, steps=2)
    before = (done.checkpoint.read_bytes(), done.checkpoint.stat().st_mtime_ns)
    again = _train(tmp_path, "run", corpus_root, steps=2)
    assert again.step == 2 and not again.interrupted
    assert (done.checkpoint.read_bytes(), done.checkpoint.stat().st_mtime_ns) == before
    fresh = _train(tmp_path, "run", corpus_root, steps=2, lr=1e-3, resume=False, stop_at=0)  # afresh: saved
    state = load_checkpoint(fresh.checkpoint)
    assert state["step"] == 0 and state["config"]["lr"] == 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_resumes_and_exports(tmp_path, corpus_root):
    full = _train(tmp_path, "gpu", corpus_root, steps=3, device="cuda", stop_at=2)
    done = _train(tmp_path, "gpu", corpus_root, steps=3, device="cuda")
    assert full.step == 2 and done.step == 3 and math.isfinite(done.loss)
    cpu = _train(tmp_path, "cpu", corpus_root, steps=3)
    a, b = load_checkpoint(done.checkpoint)["ema"], load_checkpoint(cpu.checkpoint)["ema"]
    for k in a:  # the same examples and draws: the runs differ by float rounding only
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    score, _, _ = W.load_weights(W.export_weights(done.checkpoint, tmp_path / "gpu.safetensors"))
    assert next(score.net.parameters()).device.type == "cpu"


# --- CRP: the loss through the sampler -------------------------------------------------------------
def test_si_sdr_db_is_the_metric():
    from revsde.metrics.speech import si_sdr

    g = gen(4)
    ref = torch.randn(3, 2000, generator=g, dtype=torch.float64)
    est = 0.7 * ref + 0.3 * torch.randn(3, 2000, generator=g, dtype=torch.float64)
    got = T.si_sdr_db(ref, est, eps=0.0)
    expected = torch.tensor([si_sdr(r.numpy(), e.numpy()) for r, e in zip(ref, est)], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    assert torch.isfinite(T.si_sdr_db(torch.zeros(1, 10), torch.ones(1, 10))).all()  # a silent crop


def test_waveform_inverts_the_features_with_finite_gradients_at_zero():
    wave = 0.3 * torch.randn(2, 63 * 128, generator=gen(1), dtype=torch.float64)
    spec = to_spec(wave, SGMSE_16K)
    assert spec.shape[-1] == 64
    torch.testing.assert_close(T.waveform(spec, SGMSE_16K), wave, rtol=0, atol=1e-10)
    torch.testing.assert_close(T.waveform(spec, SGMSE_16K), from_spec(spec, wave.shape[1], SGMSE_16K), rtol=0, atol=1e-12)
    x = spec.clone()
    x[..., 3, 5] = 0  # the decompression's angle has no gradient here; c·|c| does
    x.requires_grad_(True)
    T.waveform(x, SGMSE_16K).pow(2).sum().backward()
    assert torch.isfinite(torch.view_as_real(x.grad)).all()


def _crp_setup(seed=0):
    torch.manual_seed(seed)
    net = T.SpeechNet(T.build_net(TINY_NET)).double()
    model = T.score_model(net, T.build_sde(), "velocity")
    g = gen(seed)
    clean = 0.2 * torch.randn(2, 63 * 128, generator=g, dtype=torch.float64)
    noisy = clean + 0.1 * torch.randn(2, 63 * 128, generator=g, dtype=torch.float64)
    x0, y = T.spectrogram_pair(clean, noisy)
    return net, model, x0, y


@pytest.mark.parametrize("objective", ["sisdr", "data"])
def test_crp_loss_scores_the_enhancer_s_own_output_and_trains_every_call(objective):
    """The loss is the objective on exactly what ``revsde enhance`` would output from the same noise (the
    MR Sampler's SDE step from t = 1, then the final data prediction), and its gradient flows through
    both network calls."""
    from revsde.metrics.speech import si_sdr

    net, model, x0, y = _crp_setup()
    crp = T.check_crp({"objective": objective})
    enhancer = T.crp_enhancer(model, SGMSE_16K, crp, "cpu")
    loss = T.crp_loss(enhancer, x0, y, gen(3), objective, SGMSE_16K)
    assert enhancer.nfe == 2
    with torch.no_grad():
        x_hat = enhancer.spectrogram(y, gen(3))
    if objective == "sisdr":
        clean, out = T.waveform(x0, SGMSE_16K), T.waveform(x_hat, SGMSE_16K)
        expected = -sum(si_sdr(c.numpy(), o.numpy()) for c, o in zip(clean, out)) / 2
    else:
        expected = float((0.5 * (x_hat - x0).abs().pow(2).sum((1, 2, 3))).mean())
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # the gradient is the run's: the first call's input depends on nothing trainable, but the second
    # call's does; cutting the state between them (the first call's output held fixed) changes it
    loss.backward()
    params = [p for p in net.parameters() if p.grad is not None]
    full = [p.grad.clone() for p in params]
    assert sum(float(g.abs().sum()) for g in full) > 0
    net.zero_grad()

    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x, time, mu=None):
            self.calls += 1
            out = net(x, time, mu=mu)
            return out.detach() if self.calls == 1 else out

    cut = T.crp_enhancer(T.score_model(Detached(), model.sde, "velocity"), SGMSE_16K, crp, "cpu")
    T.crp_loss(cut, x0, y, gen(3), objective, SGMSE_16K).backward()
    assert any(not torch.allclose(p.grad, f) for p, f in zip(params, full))


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "data", "crp": {}}, "crp settings are for loss='crp'"),
    ({"loss": "crp", "crp": {"objective": "l1"}}, "the crp objective must be one of sisdr, data"),
    ({"loss": "crp", "crp": {"steps": 3}}, "crp has unknown setting"),
    ({"loss": "crp", "crp": {"nfe": 1}}, "--nfe must be an integer >= 2"),
    ({"loss": "crp", "crp": {"sampler": "nope"}}, "unknown sampler 'nope'"),
    ({"loss": "crp", "crp": {"options": {"order": 9}}}, "order"),
])
def test_bad_crp_settings_are_refused_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        T.train_speech(tmp_path / "out", 1, corpus_root=tmp_path / "corpus", progress=False, threads=None, **kwargs)
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "out").exists()


def test_a_crp_fine_tune_records_its_run_and_resumes_only_unchanged(tmp_path, corpus_root):
    base = _train(tmp_path, "base", corpus_root, steps=1)
    crp = {"objective": "data", "nfe": 3}
    part = _train(tmp_path, "crp", corpus_root, steps=2, stop_at=1, loss="crp", crp=crp, init_from=base.checkpoint)
    config = load_checkpoint(part.checkpoint)["config"]
    assert config["loss"] == "crp" and config["init"]["loss"] == "sgmse"
    assert config["crp"] == {"sampler": "mrs", "nfe": 3, "options": {"stochastic": True}, "objective": "data"}
    with pytest.raises(ValueError, match="was trained with other settings {'crp'"):
        _train(tmp_path, "crp", corpus_root, steps=2, loss="crp", init_from=base.checkpoint)
    done = _train(tmp_path, "crp", corpus_root, steps=2, loss="crp", crp=crp, init_from=base.checkpoint)
    assert done.step == 2 and math.isfinite(done.loss)
    first, second = W.training_stages(config)
    assert first["crp"] is None and second["crp"]["nfe"] == 3


# --- the command line and the export ------------------------------------------------------------
def test_cli_trains_resumes_and_exports_a_loadable_model(tmp_path, corpus_root, capsys):
    out, export = tmp_path / "run", tmp_path / "speech.safetensors"
    args = ["train", "speech", "-o", str(out), "--nf", "8", "--ch-mult", "1,1,1,1,1", "--batch", "2", "--frames",
            "64", "--corpus", "8", "--corpus-root", str(corpus_root), "--prediction", "score", "--threads", "1",
            "--no-progress", "--export", str(export)]
    with torch.random.fork_rng(devices=[]):
        assert main([*args, "--steps", "2"]) == 0
        printed = capsys.readouterr().out
        assert "finished at step 2/2" in printed and f"wrote {export}" in printed
        assert main([*args, "--steps", "3"]) == 0  # the same folder resumes
    assert "finished at step 3/3" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 3]  # logged at each run's end (log_every is 50)

    score, spec, config = W.load_weights(export)
    assert isinstance(score, ScoreModel) and isinstance(score.sde, OUVESDE) and score.prediction == "score"
    assert score.sde.config() == OUVESDE().config() and spec == SGMSE_16K
    assert config["trained_steps"] == 3 and config["net"]["ch_mult"] == [1, 1, 1, 1, 1]
    assert config["net"]["attn_resolutions"] == [16]  # SMALL_NET's, as the CLI keeps it
    assert isinstance(score.net, T.SpeechNet) and not score.net.training
    ema = load_checkpoint(out / "last.pt")["ema"]
    state = score.net.state_dict()
    assert state.keys() == ema.keys() and all(torch.equal(state[k], v) for k, v in ema.items())
    assert W.read_config(export)["prediction"] == "score"
    # --init-from and --t-high: a fine-tune of that run
    ft = tmp_path / "ft"
    with torch.random.fork_rng(devices=[]):
        assert main([*args[:2], "-o", str(ft), *args[4:-2], "--steps", "1", "--init-from", str(out / "last.pt"),
                     "--t-high", "0.5", "--device", "cpu", "--noises", "white,tones"]) == 0
    config = load_checkpoint(ft / "last.pt")["config"]
    assert config["t_high"] == 0.5 and config["init"]["trained_steps"] == 3 and config["noises"] == ["white", "tones"]
    # --loss crp and its run
    crp = tmp_path / "crp"
    with torch.random.fork_rng(devices=[]):
        assert main([*args[:2], "-o", str(crp), *args[4:-2], "--steps", "1", "--init-from", str(out / "last.pt"),
                     "--loss", "crp", "--crp-nfe", "3", "--crp-objective", "data", "--crp-option", "order=1",
                     "--crp-option", "stochastic=False"]) == 0
    config = load_checkpoint(crp / "last.pt")["config"]
    assert config["crp"] == {"sampler": "mrs", "nfe": 3, "options": {"order": 1, "stochastic": False},
                             "objective": "data"}


def test_cli_bad_arguments(tmp_path, capsys):
    base = ["train", "speech", "--steps", "1", "-o", str(tmp_path / "run"), "--corpus-root", str(tmp_path / "c"),
            "--no-progress"]
    assert main([*base, "--ch-mult", "1,x"]) == 2
    assert "--ch-mult must be comma-separated integers" in capsys.readouterr().err
    assert main([*base, "--frames", "96"]) == 2
    assert "frames must be a multiple of 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's choices
        main([*base, "--prediction", "eps"])
    assert "invalid choice: 'eps'" in capsys.readouterr().err
    assert main([*base, "--t-high", "2"]) == 2
    assert "t_high is the fraction of examples drawn near t = 1" in capsys.readouterr().err
    assert main([*base, "--device", "tpu"]) == 2
    assert "unknown device 'tpu'; e.g. cpu, cuda, cuda:1" in capsys.readouterr().err
    assert main([*base, "--noises", "white,engine"]) == 2
    assert "noises 'engine' is held out for the test set" in capsys.readouterr().err
    assert main([*base, "--crp-nfe", "3"]) == 2
    assert "--crp-nfe is for --loss crp (got --loss sgmse)" in capsys.readouterr().err
    assert main([*base, "--loss", "crp", "--crp-option", "order=1", "--crp-option", "order=2"]) == 2
    assert "--crp-option 'order' given twice" in capsys.readouterr().err
    assert main([*base, "--init-from", str(tmp_path / "nothing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_read_config_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    from revsde.apps.restore.model import export_weights as export_restore
    from revsde.sde import MRSDE

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="is not a revsde speech model"):
        W.read_config(tmp_path / "plain.safetensors")
    config = {"format": "revsde.restore/1", "task": "denoise", "loss": "matching", "arch": "ConditionalUNet",
              "nf": 4, "depth": 1, "sde": MRSDE().config()}
    export_restore({"config": config, "step": 1, "elapsed_s": 0.0, "ema": {"w": torch.zeros(2)}},
                   tmp_path / "restore.safetensors")
    with pytest.raises(ValueError, match="metadata format 'revsde.restore/1', expected 'revsde.speech/1'"):
        W.load_weights(tmp_path / "restore.safetensors")


def test_a_custom_net_export_needs_its_net(tmp_path):
    """A stand-in network trains on a given corpus and loads back only into a net it is handed."""
    from revsde.apps.speech.data import SpeechCorpus
    from revsde.apps.speech.espeak import Utterance

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.1, 0.2]))

        def forward(self, x, time, mu=None):
            return self.w[0] * x + self.w[1] * mu

    g = gen(0)
    corpus = SpeechCorpus("train", tuple(Utterance(f"u{k}", "en-us", "", 175, 50, 50) for k in range(3)),
                          tuple((0.3 * torch.randn(12000, generator=g)).numpy() for _ in range(3)))
    with torch.random.fork_rng(devices=[]):
        result = T.train_speech(tmp_path / "run", steps=2, batch=2, frames=64, net=Tiny(), corpus=corpus,
                                progress=False, threads=None)
    path = W.export_weights(result.checkpoint, tmp_path / "tiny.safetensors")
    assert W.read_config(path)["arch"] == "Tiny" and W.read_config(path)["corpus"] == "custom:3"
    with pytest.raises(ValueError, match="holds a Tiny: pass the network"):
        W.load_weights(path)
    score, _, _ = W.load_weights(path, net=Tiny())
    assert torch.equal(score.net.w, load_checkpoint(result.checkpoint)["ema"]["w"])
