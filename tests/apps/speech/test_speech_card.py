"""The built-in speech model's card and recommendation (``scripts/train_builtin_speech.py``): the best
MR Sampler row is what the card recommends and what the weights store, the schedule states every total
a resumed run followed, and the card's numbers are the evaluations'."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fixtures import ROOT

SCRIPT = ROOT / "scripts" / "train_builtin_speech.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_builtin_speech", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation(sampler, options, nfe, pesq, si_sdr):
    mean = {"pesq_in": 1.1, "estoi_in": 0.6, "si_sdr_in": 4.0, "pesq": pesq, "estoi": 0.65, "si_sdr": si_sdr}
    return {"sampler": sampler, "options": options, "nfe": nfe, "rows": [{}] * 24, "mean": mean,
            "std": {k: 0.1 for k in mean}, "rtf": 0.5}


CONFIG = {"sde": {"theta": 1.5, "sigma_min": 0.05, "sigma_max": 0.5}, "t_eps": 0.03, "corpus": 600, "frames": 128,
          "batch": 8, "loss": "data", "prediction": "velocity", "trained_steps": 12000, "lr": 5e-4, "lr_floor": 1e-6,
          "ema": 0.999, "elapsed_s": 36000.0,
          "net": {"nf": 16, "ch_mult": [1, 2, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16]}}
EVALS = [("mrs", {}, 2, 1.35, 8.7), ("mrs", {}, 3, 1.33, 8.2), ("mrs", {"stochastic": True}, 3, 1.36, 8.4),
         ("mrs", {}, 5, 1.25, 7.0), ("sgmse", {}, 60, 1.20, 6.0)]


def test_the_best_mrs_row_is_recommended_and_the_card_says_so(script):
    evals = [evaluation(*e) for e in EVALS]
    best = script.best_mrs(evals)
    assert (best["nfe"], best["options"]) == (3, {"stochastic": True})
    text = script.card(CONFIG, evals, "python scripts/train_builtin_speech.py --threads 2", 580_000, 2)
    assert "# mrs SDE at 3 NFE" in text and "--nfe 3 --option stochastic=True" in text
    assert "| mrs SDE | 3 | 1.360 ± 0.100 |" in text and "| sgmse | 60 | 1.200 ± 0.100 |" in text
    assert "| noisy input | — | 1.100 ± 0.100 | 0.600 ± 0.100 | 4.000 ± 0.100 | — |" in text
    assert "PESQ +0.260, ESTOI +0.050, SI-SDR +4.40 dB over the noisy input" in text
    assert "Against SGMSE+'s sampler at 60 NFE: PESQ +0.160 with 20× fewer network evaluations." in text
    assert "Adam lr 0.0005 cosine to 1e-06, no clipping" in text and "resumed" not in text
    assert "24 test pairs" in text and "0.58 M parameters" in text and "this CPU, 2 thread(s)." in text


def test_a_tie_goes_to_the_fewer_evaluations_and_sgmse_is_never_recommended(script):
    evals = [evaluation("sgmse", {}, 60, 2.0, 9.0), evaluation("mrs", {}, 5, 1.3, 8.0),
             evaluation("mrs", {}, 2, 1.3, 7.0)]
    assert script.best_mrs(evals)["nfe"] == 2


def test_the_schedule_names_every_total_of_a_resumed_run(script):
    text = script.schedule({**CONFIG, "lr_history": [[0, 20000], [5054, 12500], [5364, 12000]]})
    assert text == ("Adam lr 0.0005 cosine to 1e-06 (the run was resumed with other totals; the cosine ran over "
                    "20000 steps from step 0, over 12500 steps from step 5054, over 12000 steps from step 5364)")


def test_a_fine_tuned_model_s_card_lists_both_stages_and_their_total_time(script):
    stage1 = {"from": "/x/out/train/speech/last.pt", "trained_steps": 11500, "elapsed_s": 19692.0, "loss": "data",
              "batch": 8, "frames": 128, "lr": 5e-4, "lr_floor": 1e-6, "steps": 11500, "t_high": 0.0, "init": None,
              "lr_history": [[0, 20000], [5640, 11500]]}
    config = {**CONFIG, "trained_steps": 5000, "elapsed_s": 4000.0, "lr": 1e-4, "t_high": 0.5, "init": stage1}
    lines = script.stages(config)
    assert lines == [
        "- stage 1: 11500 steps, t ~ U[0.03, 1], Adam lr 0.0005 cosine to 1e-06 (the run was resumed with other "
        "totals; the cosine ran over 20000 steps from step 0, over 11500 steps from step 5640), no clipping, "
        "EMA 0.999; 328.2 min, 0.58 it/s",
        "- stage 2, a fine-tune of stage 1's EMA weights with a fresh optimiser: 5000 steps, 50% of each batch at "
        "t ~ U[0.9, 1], the rest t ~ U[0.03, 1], Adam lr 0.0001 cosine to 1e-06, no clipping, EMA 0.999; "
        "66.7 min, 1.25 it/s"]
    assert script.total_minutes(config) == pytest.approx(23692 / 60)
    evals = [evaluation(*e) for e in EVALS]
    text = script.card(config, evals, "python scripts/train_builtin_speech.py --threads 2", 580_000, 2)
    assert lines[0] in text and lines[1] in text and "wall time: 394.9 min of training" in text
    # a single-stage model: one "training" line
    assert script.stages(CONFIG) == ["- training: 12000 steps, t ~ U[0.03, 1], Adam lr 0.0005 cosine to 1e-06, "
                                     "no clipping, EMA 0.999; 600.0 min, 0.33 it/s"]


def test_a_stage_with_another_noise_mix_says_so_and_the_card_describes_the_added_noise(script):
    stage1 = {"from": "a", "trained_steps": 100, "elapsed_s": 60.0, "lr": 5e-4, "lr_floor": 1e-6, "steps": 100,
              "t_high": 0.0, "init": None}  # saved before noises existed: the default mix
    stage2 = {"from": "b", "trained_steps": 50, "elapsed_s": 30.0, "lr": 1e-4, "lr_floor": 1e-6, "steps": 50,
              "t_high": 0.5, "noises": list(script.speech_data.TRAIN_NOISES), "init": stage1}
    config = {**CONFIG, "trained_steps": 40, "elapsed_s": 20.0, "lr": 1e-4, "t_high": 0.5,
              "noises": [*script.speech_data.TRAIN_NOISES, "tones"], "init": stage2}
    lines = script.stages(config)
    assert ["noises" in line for line in lines] == [False, False, True]
    assert "t ~ U[0.03, 1], noises: the default mix and tones, Adam lr 0.0001" in lines[2]
    text = script.card(config, [evaluation(*e) for e in EVALS], "python scripts/train_builtin_speech.py", 580_000, 2)
    assert ("Stage 3 adds `tones` (whistles, beeps and buzzers: pure tones at 150 Hz–4 kHz or harmonic buzzes on a "
            "150–600 Hz fundamental; no training noise has a fundamental between 60 and 150 Hz") in text
    assert "tones" not in script.card(CONFIG, [evaluation(*e) for e in EVALS], "x", 580_000, 2)
    only = {**CONFIG, "noises": ["white", "hum"]}
    assert script.stages(only)[0].startswith("- training: 12000 steps, t ~ U[0.03, 1], noises: white, hum, Adam")


def test_the_card_reports_an_added_noise_on_the_test_utterances(script):
    config = {**CONFIG, "noises": [*script.speech_data.TRAIN_NOISES, "tones"]}
    evals = [evaluation(*e) for e in EVALS]
    tones = {**evaluation("mrs", {"stochastic": True}, 2, 1.68, 8.76)}
    text = script.card(config, evals, "x", 580_000, 2, {"tones": tones})
    assert ("With `tones` (a training noise of stage 1) in place of each test pair's noise, the same utterances at "
            "the same SNRs (`speech_data.test_set(noise=\"tones\")`), mrs SDE at 2 NFE: PESQ 1.100 → 1.680, ESTOI "
            "0.600 → 0.650, SI-SDR (dB) 4.000 → 8.760.") in text
    assert "With `" not in script.card(CONFIG, evals, "x", 580_000, 2, {"tones": tones})  # not trained on it


def test_card_only_rewrites_the_card_from_the_saved_evaluations(script, tmp_path, capsys):
    import json
    import shutil

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(SCRIPT.parents[1] / "revsde" / "weights" / f"{script.BUILTIN}", weights / script.BUILTIN)
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.json").write_text(json.dumps([evaluation(*e) for e in EVALS]))
    assert script.main(["--threads", "2", "--out", str(out), "--weights", str(weights), "--card-only"]) == 0
    text = (weights / script.BUILTIN).with_suffix(".md").read_text()
    assert "| mrs SDE | 3 | 1.360 ± 0.100 | 0.650 ± 0.100 | 8.400 ± 0.100 | 0.50 |" in text
    assert "command: `python scripts/train_builtin_speech.py --threads 2 --out" in text and "--card-only" not in text
    (out / "eval.json").unlink()
    with pytest.raises(SystemExit):
        script.main(["--out", str(out), "--weights", str(weights), "--card-only"])
    assert "--card-only needs the saved evaluations" in capsys.readouterr().err


def test_a_crp_stage_names_the_run_it_trained_through_and_the_loss_line_stays_stage_1_s(script):
    stage1 = {"from": "a", "trained_steps": 100, "elapsed_s": 60.0, "loss": "data", "lr": 5e-4, "lr_floor": 1e-6,
              "steps": 100, "t_high": 0.0, "init": None}
    crp = {"sampler": "mrs", "nfe": 2, "options": {"stochastic": True}, "objective": "sisdr"}
    config = {**CONFIG, "loss": "crp", "crp": crp, "trained_steps": 30, "elapsed_s": 45.0, "lr": 5e-5,
              "init": stage1}
    lines = script.stages(config)
    assert lines[1] == ("- stage 2, a fine-tune of stage 1's EMA weights with a fresh optimiser: 30 steps, loss "
                        "through mrs SDE at 2 NFE unrolled from the prior (CRP), −SI-SDR of the waveforms, Adam lr "
                        "5e-05 cosine to 1e-06, no clipping, EMA 0.999; 0.8 min, 0.67 it/s")
    assert "t ~ U" in lines[0]
    data = {**config, "crp": {**crp, "objective": "data", "sampler": "sgmse", "nfe": 60, "options": {}}}
    assert "loss through sgmse at 60 NFE unrolled from the prior (CRP), ½ Σ|x̂ − x₀|² on the spectrograms" in \
        script.stages(data)[1]
    text = script.card(config, [evaluation(*e) for e in EVALS], "x", 580_000, 2)
    assert "- loss: SGMSE's data-prediction MSE ½ Σ|x̂₀ − x₀|²" in text  # the base training's loss


def test_a_stage_on_other_draws_names_its_seed(script):
    stage1 = {"from": "a", "trained_steps": 100, "elapsed_s": 60.0, "lr": 5e-4, "lr_floor": 1e-6, "steps": 100,
              "t_high": 0.0, "init": None}  # saved before seed was kept: seed 0
    config = {**CONFIG, "trained_steps": 40, "elapsed_s": 20.0, "lr": 5e-5, "seed": 1, "init": stage1}
    lines = script.stages(config)
    assert "seed" not in lines[0]
    assert "t ~ U[0.03, 1], examples drawn from seed 1, Adam lr 5e-05" in lines[1]
    assert script.CRP2["seed"] == 1 and [name for name, _, _ in script.FINE_TUNES][3:] == ["crp2", "crp3", "crp4"]


def test_start_from_counts_the_stages_a_model_holds_and_refuses_another_command_s(script, tmp_path, capsys):
    import shutil

    export = SCRIPT.parents[1] / "revsde" / "weights" / script.BUILTIN
    held = script.speech_weights.training_stages(script.speech_weights.read_config(export))
    steps = [int(stage["trained_steps"]) for stage in held]
    assert script.start_stages(export, steps + [100]) == len(held)
    assert script.start_stages(export, steps + [100, 200]) == len(held)
    with pytest.raises(ValueError, match=f"holds all {len(held)} stages of this command: nothing to train"):
        script.start_stages(export, steps)
    other = [steps[0] + 1, *steps[1:], 100]
    with pytest.raises(ValueError, match=r"holds finished stages of \[.*this command's stages are"):
        script.start_stages(export, other)
    with pytest.raises(ValueError, match="no such file"):
        script.start_stages(tmp_path / "missing.safetensors", steps + [100])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="--start-from .* is not a training checkpoint"):
        script.start_stages(junk, steps + [100])
    junk_export = tmp_path / "junk.safetensors"
    junk_export.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="--start-from .* is not a readable .safetensors"):
        script.start_stages(junk_export, steps + [100])
    # the command's stages: stage 1's steps, then each fine-tune's up to the first 0
    args = script.argparse.Namespace(steps=10, finetune_steps=5, tones_steps=4, crp_steps=0, crp2_steps=3)
    assert script.stage_steps(args) == [10, 5, 4]
    defaults = script.argparse.Namespace(steps=script.DEFAULTS["steps"], **{
        f"{name}_steps": settings["steps"] for name, settings in
        (("finetune", script.FINETUNE), ("tones", script.TONES), ("crp", script.CRP), ("crp2", script.CRP2),
         ("crp3", script.CRP3), ("crp4", script.CRP4))})
    assert script.stage_steps(defaults)[:len(held)] == steps  # the committed model is the defaults' run
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(export, weights / script.BUILTIN)
    names = [name for name, _, _ in script.FINE_TUNES]
    chain = [f"--{name}-steps={n}" for name, n in zip(names, steps[1:] + [0] * len(names))]  # the model's own
    with pytest.raises(SystemExit):
        script.main(["--start-from", str(export), f"--steps={steps[0]}", *chain, "--weights", str(weights),
                     "--out", str(tmp_path / "out")])
    assert "nothing to train" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_card_s_command_drops_the_flags_that_do_not_change_the_weights(script):
    argv = ["--threads", "2", "--start-from", "out/x.safetensors", "--crp2-steps", "3500", "--eval-only",
            "--start-from=y.pt", "--card-only", "--no-progress"]
    assert script.command_args(argv) == ["--threads", "2", "--crp2-steps", "3500", "--no-progress"]


def test_a_stage_on_other_crops_says_so_and_the_features_line_keeps_stage_one_s(script):
    stage1 = {"from": "a", "trained_steps": 100, "elapsed_s": 60.0, "lr": 5e-4, "lr_floor": 1e-6, "steps": 100,
              "t_high": 0.0, "batch": 8, "frames": 128, "init": None}
    config = {**CONFIG, "trained_steps": 40, "elapsed_s": 20.0, "lr": 5e-5, "batch": 4, "frames": 256, "seed": 2,
              "init": stage1}
    lines = script.stages(config)
    assert "crops" not in lines[0]
    assert (script.CRP3["frames"], script.CRP3["batch"]) == (256, 4)  # stage 6's crops, the same frames per step
    assert (script.CRP4["frames"], script.CRP4["batch"]) == (384, 3)  # stage 7's
    assert "examples drawn from seed 2, crops of 256 frames (2.04 s), batch 4, Adam lr 5e-05" in lines[1]
    text = script.card(config, [evaluation(*e) for e in EVALS], "x", 580_000, 2)
    assert "each crop divided by max|noisy|; crops of 128 frames (1.02 s), batch 8 (later stages: their own, below)" \
        in text
    assert "(later stages" not in script.card(CONFIG, [evaluation(*e) for e in EVALS], "x", 580_000, 2)


def test_only_the_stage_resumed_with_another_total_says_so(script):
    stage1 = {"from": "a", "trained_steps": 100, "elapsed_s": 60.0, "lr": 5e-4, "lr_floor": 1e-6, "steps": 100,
              "t_high": 0.0, "init": None}  # ran over its first total: no lr_history
    config = {**CONFIG, "trained_steps": 1000, "elapsed_s": 20.0, "lr": 5e-5, "steps": 1000,
              "lr_history": [[0, 1500], [120, 1000]], "init": stage1}
    first, last = script.stages(config)
    assert "resumed" not in first
    assert "(the run was resumed with other totals; the cosine ran over 1500 steps from step 0, over 1000 steps " \
           "from step 120)" in last


def test_a_regenerated_card_keeps_its_training_history(script, tmp_path):
    """The card's hand-written ``## Training history`` section survives regeneration, verbatim and last;
    a card without one (or no card yet) gets none."""
    evals = [evaluation(*e) for e in EVALS]
    history = "## Training history\n\nStage 2 lifted SI-SDR by 0.4 dB.\n\n- a probe that did not help"
    old = tmp_path / "speech_enhance.md"
    assert script.kept_history(old) == ""
    old.write_text(script.card(CONFIG, evals, "cmd", 580_000, 2) + "\n" + history + "\n")
    kept = script.kept_history(old)
    assert kept == history
    text = script.card(CONFIG, evals, "cmd", 580_000, 2, history=kept)
    assert text.endswith(history + "\n") and text.count("## Training history") == 1
    assert script.kept_history(old.with_name("none.md")) == ""

