"""``revsde bench restore`` on a tiny model: rows, the reference, the reach column, files."""
from __future__ import annotations

import json

import torch

from revsde.apps.restore import bench as restore_bench
from revsde.nets.irsde_unet import ConditionalUNet, irsde_score_model
from revsde.sde import MRSDE


def test_restore_bench_rows_reference_and_files(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = irsde_score_model(ConditionalUNet(nf=8, depth=2).eval(), MRSDE())
    configs = [("mrs ODE data 2", "mrs", {"order": 2}), ("pc", "pc", {"corrector": "ald"})]
    result = restore_bench.run_restore_bench("denoise", model, nfes=(2, 4), configs=configs, crop=24,
                                             images=["camera"], reference_nfe=6)
    assert [(r["label"], r["nfe"]) for r in result.rows] == [("mrs ODE data 2", 2), ("mrs ODE data 2", 4),
                                                             ("pc", 2), ("pc", 4)]
    assert result.reference["nfe"] == 6 and result.images == ["camera"]
    assert 15 < result.input_psnr < 30  # σ = 25/255 noise on a 24×24 crop
    text = result.markdown()
    assert "| mrs ODE data 2 |" in text and "within 0.1 dB" in text
    paths = restore_bench.write(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data["reaches"]) == {"mrs ODE data 2", "pc"}
    assert paths["png"].stat().st_size > 1000
