"""Train the built-in unconditional image model with both loss weightings, compare them, export the better.

    python scripts/train_builtin_image.py                  # train both (resumable), evaluate, export, card
    python scripts/train_builtin_image.py --train-only     # only the (resumable) training

Each weighting (``constant``, then ``debiased``) trains into ``OUT/image_digits_<weighting>/`` and resumes
from its ``last.pt`` when the command is rerun. When both have reached their steps, each is sampled
(2000 digits per setting, mrs order 2 at a few NFE, and DDPM ancestral sampling with diffusers'
``DDPMScheduler``) and measured by FD-digits and KID against all 1797 digits
(``revsde/weights/fd_digits_ref.npz``; ``scripts/train_fd_extractor.py`` made both). Results are
cached in ``OUT/image_digits_eval.json`` so a rerun only computes what is missing. Then:

- ``revsde/weights/image_digits.safetensors``: the weighting with the lower FD-digits at 20 NFE (mrs);
- ``revsde/weights/image_digits_<other>.safetensors``: the other weighting (when ≤ 6 MB);
- ``revsde/weights/image_digits_diffusers/``: the chosen model as a ``DDPMPipeline`` folder;
- ``revsde/weights/image_digits.md``: the model card comparing the two weightings, and
  ``image_digits_samples.png`` (64 samples of each).
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revsde import sample  # noqa: E402
from revsde.apps.image import train as T  # noqa: E402
from revsde.apps.image import model as M  # noqa: E402
from revsde.files import atomic_output  # noqa: E402
from revsde.apps.image.data import digits  # noqa: E402
from revsde.metrics.fid import FeatureStats, fid, kid, load_stats, precision_recall  # noqa: E402
from revsde.nets.digits_classifier import DEFAULT_REFERENCE, load_fd_extractor  # noqa: E402

# Measured on this machine's CPU (one thread, batch 64, 16×16): SMALL_UNET (1.11 M parameters, widths
# 32-64-64, attention at 8×8 and 4×4) trains at ~5 it/s; widths 32-64-128 (2.6 M) at ~2.7 it/s and
# 48-96-96 (2.5 M) at ~2.1 it/s. With the CPU shared with other jobs it ran at 3.2-3.5 it/s, so 6000 steps
# (about 30 minutes per weighting).
DEFAULTS = {"steps": 6000, "batch": 64, "lr": 5e-4}
WEIGHTINGS = ("constant", "debiased")
MAX_SHIPPED_BYTES = 6_000_000
CHOOSE_NFE = 20
SEED = 10_000  # sample b of every setting draws from a generator seeded SEED + b
#: further sample sets at CHOOSE_NFE (sample b seeded seed + b), so the choice rests on a mean with a spread
CHOICE_SEEDS = (SEED, 20_000, 30_000)


def train(args) -> dict:
    results = {}
    for weighting in WEIGHTINGS:
        out = Path(args.out) / f"image_digits_{weighting}"
        print(f"== training {weighting} into {out}", flush=True)
        result = T.train_image(out, args.steps, weighting=weighting, batch=args.batch, lr=args.lr,
                               threads=args.threads, progress=args.progress, checkpoint_every=250)
        print(f"{weighting}: step {result.step}/{result.steps}, {result.elapsed_s / 60:.1f} min, loss {result.loss}",
              flush=True)
        if result.interrupted:
            raise SystemExit(130)
        results[weighting] = result
    return results



# --- evaluation ----------------------------------------------------------------------------------
def draw(weights: Path, sampler: str, steps: int, n: int, batch: int, seed: int = SEED) -> torch.Tensor:
    """``n`` samples ``(n, 1, 16, 16)`` of the model in ``weights``, sample ``b`` seeded ``seed + b``.

    ``"mrs"``: ``revsde.sample(..., sampler="mrs", order=2, steps=steps)`` (its default log-SNR grid);
    ``"ddpm"``: diffusers' ``DDPMScheduler`` (ancestral, x̂₀ clipped to [−1, 1], its default
    ``leading`` spacing) for ``steps`` steps, the raw final state.
    """
    from diffusers import DDPMScheduler

    from revsde.integrations.pipelines import UnconditionalPipeline

    model, config = M.load_weights(weights)
    pipe = None
    if sampler == "ddpm":
        pipe = UnconditionalPipeline(model.net.unet, DDPMScheduler(**config["schedule"], prediction_type="epsilon"))
        pipe.set_progress_bar_config(disable=True)
    out = []
    with torch.no_grad():
        for lo in range(0, n, batch):
            gens = [torch.Generator().manual_seed(seed + b) for b in range(lo, min(lo + batch, n))]
            if pipe is None:
                x = sample(model, shape=(len(gens), 1, 16, 16), sampler="mrs", order=2, steps=steps,
                           generator=gens).x
            else:
                x = pipe(batch_size=len(gens), num_inference_steps=steps, generator=gens, output_type="raw").images
            out.append(x.float())
    return torch.cat(out)


def measure(samples: torch.Tensor, extractor, ref, real_features: torch.Tensor) -> dict:
    """FD-digits against the reference statistics, KID and precision/recall against the real digits' features."""
    with torch.no_grad():
        features = torch.cat([extractor(part) for part in samples.split(500)]).double()
    stats = FeatureStats(label=extractor.label).update(features)
    kid_mean, kid_std = kid(features, real_features, subsets=100, subset_size=min(1000, len(features)),
                            generator=torch.Generator().manual_seed(0))
    precision, recall = precision_recall(real_features, features, k=3)
    with torch.no_grad():
        classes = extractor.net(samples.clamp(-1, 1)).argmax(1)
    counts = torch.bincount(classes, minlength=10).tolist()
    return {"fd": fid(stats, ref), "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
            "class_counts": counts, "pixel_mean": float(samples.mean()), "out_of_range": float(
                (samples.abs() > 1.05).double().mean())}


def _sha256(path: Path) -> str:
    """A digest of the weights in ``path`` (the file's bytes are not stable: the metadata order varies)."""
    import hashlib

    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluate(args, exported: dict[str, Path]) -> dict:
    """Every (weighting, sampler, steps) setting, cached in ``OUT/image_digits_eval.json``."""
    cache_path = Path(args.out) / "image_digits_eval.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    extractor = load_fd_extractor()
    ref = load_stats(DEFAULT_REFERENCE)
    with torch.no_grad():
        real_features = extractor(digits(16)).double()
    settings = ([("mrs", nfe, SEED) for nfe in args.nfe] + [("ddpm", s, SEED) for s in args.ddpm_steps]
                + [("mrs", CHOOSE_NFE, seed) for seed in CHOICE_SEEDS if seed != SEED])
    for weighting, path in exported.items():
        digest = _sha256(path)
        for sampler, steps, seed in settings:
            key = f"{weighting}/{sampler}/{steps}/n{args.n}" + ("" if seed == SEED else f"/seed{seed}")
            if key in cache and cache[key]["weights_sha256"] == digest:
                continue
            start = time.perf_counter()
            x = draw(path, sampler, steps, args.n, args.eval_batch, seed)
            seconds = time.perf_counter() - start
            row = {"weighting": weighting, "sampler": sampler, "steps": steps, "n": args.n, "seed": seed,
                   "seconds": seconds, "weights_sha256": digest, **measure(x, extractor, ref, real_features)}
            cache[key] = row
            print(f"{key}: FD-digits {row['fd']:.3f}, KID {row['kid']:.4f}, precision {row['precision']:.3f}, "
                  f"recall {row['recall']:.3f} ({seconds:.0f} s)", flush=True)
            with atomic_output(cache_path) as f:
                f.write(json.dumps(cache, indent=1).encode())
            if sampler == "mrs" and steps == CHOOSE_NFE and seed == SEED:
                torch.save(x[:64].clone(), Path(args.out) / f"image_digits_{weighting}_samples.pt")
    # the floor: real digits against the same reference (half of them: sampling noise of the estimate)
    if "real/half" not in cache:
        half = digits(16)[::2]
        cache["real/half"] = {"n": len(half), **measure(half, extractor, ref, real_features)}
        with atomic_output(cache_path) as f:
            f.write(json.dumps(cache, indent=1).encode())
    return cache


# --- export and card ------------------------------------------------------------------------------
def choice_fds(results: dict, n: int) -> dict[str, list[float]]:
    """FD-digits at ``CHOOSE_NFE`` (mrs) of each weighting, one per sample set of ``CHOICE_SEEDS``."""
    def key(w, seed):
        return f"{w}/mrs/{CHOOSE_NFE}/n{n}" + ("" if seed == SEED else f"/seed{seed}")
    return {w: [results[key(w, seed)]["fd"] for seed in CHOICE_SEEDS] for w in WEIGHTINGS}


def _mean_std(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def sample_grid(out: Path, path: Path) -> None:
    """64 samples of each weighting side by side (8×8 grids, tiles 1 px apart), upscaled ×3, as PNG."""
    import io

    from PIL import Image

    panels = []
    for weighting in WEIGHTINGS:
        x = torch.load(out / f"image_digits_{weighting}_samples.pt", weights_only=True)[:64]
        x = torch.cat([x, torch.full((64 - len(x), *x.shape[1:]), -1.0)])  # fewer than 64 in small test runs
        tiles = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0]           # (64, 16, 16)
        tiles = torch.nn.functional.pad(tiles, (0, 1, 0, 1), value=96)                  # grey gap
        panels.append(tiles.reshape(8, 8, 17, 17).permute(0, 2, 1, 3).reshape(136, 136))
        panels.append(torch.full((136, 8), 255, dtype=torch.uint8))
    grid = torch.cat(panels[:-1], 1).numpy()
    image = Image.fromarray(grid).resize((3 * grid.shape[1], 3 * grid.shape[0]), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    with atomic_output(path) as f:
        f.write(buffer.getvalue())


def _verdict(fds: dict, chosen: str, other: str) -> str:
    gap = float(np.mean(fds[other]) - np.mean(fds[chosen]))
    spread = max(float(np.std(fds[w], ddof=1)) for w in WEIGHTINGS)
    if gap < spread:
        return (f"The two weightings tie at {CHOOSE_NFE} NFE: the means differ by {gap:.3f}, less than the spread "
                f"between sample sets ({spread:.3f}); {chosen} ships by the rule (lower mean), not by a margin "
                "this measurement can resolve.")
    return f"{chosen} is lower by {gap:.3f}, more than the spread between sample sets ({spread:.3f})."


def _lower(results: dict, sampler: str, steps: int, n: int) -> str:
    fd = {w: results[f"{w}/{sampler}/{steps}/n{n}"]["fd"] for w in WEIGHTINGS}
    low, high = sorted(WEIGHTINGS, key=fd.get)
    return f"{low} ({fd[low]:.3f} vs {fd[high]:.3f})"


def card(args, configs: dict, results: dict, chosen: str, shipped: dict, command: str) -> str:
    c = configs[chosen]
    unet = c["unet"]
    other = [w for w in WEIGHTINGS if w != chosen][0]
    settings = [("mrs", nfe) for nfe in args.nfe] + [("ddpm", s) for s in args.ddpm_steps]

    def row(weighting, sampler, steps):
        r = results[f"{weighting}/{sampler}/{steps}/n{args.n}"]
        what = f"mrs, order 2, {steps} NFE" if sampler == "mrs" else f"DDPM ancestral, {steps} steps"
        return (f"| {weighting} | {what} | {r['fd']:.3f} | {r['kid']:.4f} ± {r['kid_std']:.4f} | "
                f"{r['precision']:.3f} | {r['recall']:.3f} | {r['seconds'] / 60:.1f} |")

    real = results["real/half"]
    fds = choice_fds(results, args.n)
    counts = results[f"{chosen}/mrs/{CHOOSE_NFE}/n{args.n}"]["class_counts"]
    lines = [
        "# revsde built-in model: image_digits",
        "",
        f"An unconditional DDPM of 16×16 handwritten digits: a diffusers `UNet2DModel` "
        f"({c['n_params'] / 1e6:.2f} M parameters) predicting ε on diffusers' default DDPM schedule "
        f"(1000 steps, β linear 1e-4 → 0.02), trained by revsde on scikit-learn's digits. "
        f"`image_digits.safetensors` is the **{chosen}**-weighting model (lower mean FD-digits at {CHOOSE_NFE} "
        f"NFE of mrs over {len(CHOICE_SEEDS)} sets of {args.n} samples: {_mean_std(fds[chosen])} against "
        f"{_mean_std(fds[other])}); "
        + (f"`image_digits_{other}.safetensors` is the {other}-weighting one." if other in shipped else
           f"the {other}-weighting model is not shipped (its numbers are below)."),
        "",
        "![64 samples of each weighting](image_digits_samples.png)",
        "",
        f"*64 samples of each model, mrs order 2 at {CHOOSE_NFE} NFE, the same seeds: "
        f"{WEIGHTINGS[0]} weighting left, {WEIGHTINGS[1]} right. Both nets started from the same initialisation "
        "and saw the same batches and noise draws, so they map much of the same noise to the same digit.*",
        "",
        "## Use",
        "",
        "```python",
        "import revsde",
        "from revsde.apps.image.model import load_weights",
        "model, config = load_weights('revsde/weights/image_digits.safetensors')",
        "x = revsde.sample(model, shape=(16, 1, 16, 16), sampler='mrs', order=2, steps=20, seed=0).x  # in [-1, 1]",
        "```",
        "",
        "or, as a diffusers pipeline with any scheduler:",
        "",
        "```python",
        "from diffusers import DDPMPipeline, DPMSolverMultistepScheduler",
        "pipe = DDPMPipeline.from_pretrained('revsde/weights/image_digits_diffusers')",
        "pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)",
        "images = pipe(batch_size=16, num_inference_steps=20).images",
        "```",
        "",
        "## Training",
        "",
        f"- command: `{command}` (both weightings, one after the other; rerunning resumes; the equivalent single run "
        f"is `revsde train image --weighting {chosen} --steps {c['trained_steps']} -o OUT --export FILE.safetensors`)",
        "- data: the 1797 digits of `sklearn.datasets.load_digits` (8×8, values 0..16) as "
        "`revsde.apps.image.data.digits(16)`: v/8 − 1, bicubic upsampling to 16×16, clamped to [−1, 1]; random "
        f"batches of {c['batch']} with replacement, each image shifted by −1, 0 or +1 px horizontally (no flips)",
        f"- network: `UNet2DModel(sample_size=16, in/out channels 1, "
        f"block_out_channels={tuple(unet['block_out_channels'])}, "
        f"layers_per_block={unet['layers_per_block']}, down={tuple(unet['down_block_types'])}, "
        f"up={tuple(unet['up_block_types'])}, norm_num_groups={unet['norm_num_groups']}, "
        f"attention_head_dim={unet['attention_head_dim']})`: self-attention at 8×8 and in the 4×4 middle block",
        "- loss: per example k ~ U{0..999}, x_k = sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε, "
        "w_k · mean over pixels of (ε̂ − ε)²:",
        "  - **constant**: w_k = 1 (DDPM's simple loss);",
        "  - **debiased**: w_k = SNR_k^(−1/2) / mean_j SNR_j^(−1/2), SNR = ᾱ/(1 − ᾱ): the debiased estimation "
        "loss of Yu et al., *Debias the Training of Diffusion Models* (arXiv 2310.08442), as diffengine's "
        "`DeBiasEstimationLoss`, divided by its mean over the 1000 steps so the loss keeps the constant "
        "weighting's scale (this does not move the optimum). The weights run from 5.6e-4 at k = 0 to 8.8 at k = 999.",
        f"- AdamW (β 0.9, 0.99) lr {c['lr']:g} cosine-decayed to {c['lr_floor']:g}, gradient clip 1.0, EMA "
        f"{c['ema']} (exported), seed {c['seed']}",
    ]
    for w in WEIGHTINGS:
        cw = configs[w]
        lines.append(f"- {w}: {cw['trained_steps']} steps in {cw['elapsed_s'] / 60:.1f} min on {args.threads} CPU "
                     f"thread(s) ({cw['trained_steps'] / cw['elapsed_s']:.2f} it/s; {platform.machine()}, "
                     f"torch {torch.__version__}; the CPU was shared with other jobs)")
    lines += [
        "",
        "## Results",
        "",
        f"{args.n} samples per row (sample b seeded {SEED} + b, the same for every row) against all 1797 digits, in "
        "the feature space of the FD-digits classifier (`revsde/weights/fd_digits.md`; not FID): FD-digits against "
        "`fd_digits_ref.npz`, KID (mean ± std over 100 subsets of 1000) and improved precision / recall "
        "(k = 3) against the digits' features. mrs is revsde's MR Sampler / DPM-Solver++ (data prediction, "
        "ODE, log-SNR grid); DDPM is diffusers' `DDPMScheduler` (ancestral, x̂₀ clipped to [−1, 1]; not run at its "
        "1000 steps, which would take ten times the minutes of the 100-step row per model). Minutes: sampling "
        f"on {args.eval_threads or args.threads} CPU thread(s), shared with other jobs.",
        "",
        "| weighting | sampler | FD-digits | KID | precision | recall | minutes |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(row(w, s, n) for w in WEIGHTINGS for s, n in settings),
        f"| real digits | every other one of the 1797 ({real['n']}) | {real['fd']:.3f} | | | | |",
        "",
        f"The real-digits row is the floor of FD-digits: the same statistics for half of the training digits "
        f"themselves (KID and precision/recall of a subset of the reference set against that set say nothing, so "
        f"they are left out). Class counts of the {chosen} model's {args.n} samples at {CHOOSE_NFE} NFE (0…9, by the "
        f"FD-digits classifier): {', '.join(map(str, counts))}.",
        "",
        f"The choice: FD-digits at {CHOOSE_NFE} NFE (mrs, order 2) for {len(CHOICE_SEEDS)} independent sets of "
        f"{args.n} samples (seeds {', '.join(map(str, CHOICE_SEEDS))}, + b per sample): "
        + "; ".join(f"{w} {', '.join(f'{v:.3f}' for v in fds[w])} (mean ± std {_mean_std(fds[w])})"
                    for w in WEIGHTINGS) + ".",
        "",
        _verdict(fds, chosen, other),
        "",
        "Per setting (the first sample set), the lower FD-digits: " + "; ".join(
            f"{'mrs ' + str(n) + ' NFE' if smp == 'mrs' else 'DDPM ' + str(n) + ' steps'}: "
            + _lower(results, smp, n, args.n) for smp, n in settings) + ".",
        "",
        "## Files",
        "",
        f"- `image_digits.safetensors`: the {chosen} model (revsde format: the `UNet2DModel` state dict, its config "
        "in the metadata)",
    ]
    if other in shipped:
        lines.append(f"- `image_digits_{other}.safetensors`: the {other} model, same format")
    lines += [
        "- `image_digits_diffusers/`: the chosen model as a `DDPMPipeline` folder (`model_index.json`, `unet/`, "
        "`scheduler/` with a `DDPMScheduler` of the training schedule)",
        "- `image_digits_samples.png`: the samples above",
        "",
    ]
    return "\n".join(lines)


def export(args) -> dict[str, Path]:
    out = Path(args.out)
    return {w: M.export_weights(out / f"image_digits_{w}" / "last.pt", out / f"image_digits_{w}.safetensors")
            for w in WEIGHTINGS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps of each weighting")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "out" / "train"), help="checkpoints, exports and the eval cache")
    p.add_argument("--weights", default=str(ROOT / "revsde" / "weights"), help="where the shipped files go")
    p.add_argument("--n", type=int, default=2000, help="samples per evaluated setting")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20], help="mrs NFEs to evaluate")
    p.add_argument("--ddpm-steps", type=int, nargs="*", default=[100], help="DDPM ancestral step counts to evaluate")
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--eval-threads", type=int, default=None, help="torch threads of the evaluation (default: --threads)")
    p.add_argument("--train-only", action="store_true", help="stop after training")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    args = p.parse_args(argv)
    if CHOOSE_NFE not in args.nfe:
        p.error(f"--nfe must include {CHOOSE_NFE}, the NFE the models are compared at")
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in ["scripts/train_builtin_image.py",
                                                           *(sys.argv[1:] if argv is None else argv)])
    train(args)
    if args.train_only:
        return 0
    exported = export(args)
    torch.set_num_threads(args.eval_threads or args.threads)
    results = evaluate(args, exported)
    fds = choice_fds(results, args.n)
    chosen = min(WEIGHTINGS, key=lambda w: np.mean(fds[w]))
    print(f"FD-digits at {CHOOSE_NFE} NFE, per sample set: {fds}; shipping {chosen}", flush=True)

    weights = Path(args.weights)
    for stale in (weights / f"image_digits_{w}.safetensors" for w in WEIGHTINGS):  # not the flow model's file
        stale.unlink(missing_ok=True)
    shutil.copyfile(exported[chosen], weights / "image_digits.safetensors")
    shipped = {chosen: weights / "image_digits.safetensors"}
    for w, path in exported.items():
        if w != chosen and path.stat().st_size <= MAX_SHIPPED_BYTES:
            shipped[w] = weights / f"image_digits_{w}.safetensors"
            shutil.copyfile(path, shipped[w])
    folder = weights / "image_digits_diffusers"
    if folder.exists():
        shutil.rmtree(folder)
    M.export_diffusers(shipped[chosen], folder)
    sample_grid(Path(args.out), weights / "image_digits_samples.png")
    configs = {w: M.read_config(p) for w, p in exported.items()}
    with atomic_output(weights / "image_digits.md") as f:
        f.write(card(args, configs, results, chosen, shipped, command).encode())
    print(f"wrote {', '.join(str(p) for p in shipped.values())}, {folder} and {weights / 'image_digits.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
