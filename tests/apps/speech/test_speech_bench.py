"""Speech evaluation and `revsde bench speech`: the scores are the metrics of the right signals,
the reference and "reaches" bookkeeping, and the files written."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from revsde import ScoreModel
from revsde.apps.speech import bench as B
from revsde.apps.speech.enhance import SpeechModel
from revsde.apps.speech.eval import evaluate_speech, score
from revsde.audio import SGMSE_16K
from revsde.metrics import energy_ratios, estoi, pesq_wb
from revsde.sde import OUVESDE

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None and not __import__("os").environ.get("CI"),
                                  reason="the test pairs are spoken by Debian's espeak-ng (apt-get install espeak-ng)")


class Identity(nn.Module):
    """Data prediction ``x̂0 = y``: every sampler returns (about) the noisy input."""

    def forward(self, x, time, mu=None):
        return mu


@pytest.fixture(scope="module")
def pairs():
    from revsde.apps.speech.data import test_set

    return test_set()[:2]


@pytest.fixture(scope="module")
def identity():
    return SpeechModel(ScoreModel(Identity(), OUVESDE(), prediction="data"), SGMSE_16K, "identity")


@needs_espeak
def test_scores_are_the_metrics_of_clean_noisy_and_estimate(pairs):
    p = pairs[0]
    got = score(p.clean, p.noisy, p.noisy, 16000)
    assert got["pesq"] == pytest.approx(pesq_wb(p.clean, p.noisy, 16000))
    assert got["estoi"] == pytest.approx(estoi(p.clean, p.noisy, 16000))
    assert got["si_sdr"] == pytest.approx(energy_ratios(p.noisy, p.clean, p.noisy).si_sdr)


@needs_espeak
def test_identity_model_leaves_the_scores_of_the_input(pairs, identity):
    """With x̂0 = y the ODE's fixed point is y: the 'enhanced' signal is the noisy one, so its scores
    equal the input's (up to the STFT round trip)."""
    ev = evaluate_speech(identity, sampler="mrs", nfe=2, pairs=pairs)
    assert ev["nfe"] == 2 and len(ev["rows"]) == 2 and ev["rtf"] > 0
    for key in ("pesq", "estoi", "si_sdr"):
        assert ev["mean"][key] == pytest.approx(ev["mean"][key + "_in"], rel=1e-3, abs=1e-3)
    assert all(np.isfinite(r["snr_db"]) for r in ev["rows"])


def test_reaches_and_markdown_from_rows():
    rows = [{"label": "mrs ODE data 2", "sampler": "mrs", "options": {}, "nfe": n, "rtf": 0.1 * n,
             "pesq": p, "estoi": 0.8, "si_sdr": 10.0} for n, p in ((5, 2.0), (10, 2.46), (20, 2.5))]
    ref = {"label": "reference", "sampler": "sgmse", "options": {}, "nfe": 60, "rtf": 6.0, "pesq": 2.5,
           "estoi": 0.8, "si_sdr": 11.0}
    result = B.SpeechBenchResult("m", rows, ref, {"pesq": 1.5, "estoi": 0.6, "si_sdr": 3.0}, pairs=2, nfes=[5, 10, 20])
    assert result.reaches("mrs ODE data 2") == 10  # 2.46 ≥ 2.5 − 0.05; 2.0 is not
    assert result.reaches("nothing") is None
    text = result.markdown()
    assert "| mrs ODE data 2 | 10 | 2.460 |" in text and "- mrs ODE data 2: 10" in text
    assert json.loads(json.dumps(result.to_json()))["reaches"] == {"mrs ODE data 2": 10}


@needs_espeak
def test_bench_smoke_writes_table_json_and_plot(pairs, identity, tmp_path):
    """Smoke test (bookkeeping only): two configurations, one NFE each, two pairs."""
    result = B.run_speech_bench(identity, configs=[("sgmse", "sgmse", {}), ("mrs ODE data 1", "mrs", {"order": 1})],
                                nfes={"sgmse": (2,), "mrs": (2,)}, pairs=pairs, reference_nfe=4)
    assert [r["label"] for r in result.rows] == ["sgmse", "mrs ODE data 1"] and result.reference["nfe"] == 4
    paths = B.write(result, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_speech.json", "bench_speech.md", "bench_speech.png"]
    assert json.loads(paths["json"].read_text())["pairs"] == 2
    with pytest.raises(ValueError, match="sampler"):
        B.run_speech_bench(identity, configs=[("x", "no_such_sampler", {})], nfes={"no_such_sampler": (2,)},
                           pairs=pairs)


def test_identity_net_is_data_prediction_of_y():
    y = torch.randn(1, 1, 4, 4, dtype=torch.cfloat)
    assert torch.equal(Identity()(y * 0, torch.tensor([0.5]), mu=y), y)
