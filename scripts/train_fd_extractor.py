"""Train the FD-digits feature extractor and write its weights, model card and reference statistics.

    python scripts/train_fd_extractor.py            # a few minutes on one CPU thread

The classifier (``revsde.nets.digits_classifier.DigitsClassifier``) learns the 10 classes of
scikit-learn's digits at 16×16 (``revsde.apps.image.data.digits``) from 1497 of them; the other 300
(a fixed random choice, seed 0) are held out to measure its accuracy. Augmentation: random shifts of
up to 1 pixel in each direction and Gaussian pixel noise of a random std in [0, 0.2], so that its
features stay meaningful on imperfect generated digits. Writes

- ``revsde/weights/fd_digits.safetensors``: the weights (metadata: format, width, feature_dim,
  accuracy);
- ``revsde/weights/fd_digits_ref.npz``: mean and covariance of the 64-d features of all 1797
  digits (pytorch-fid's keys ``mu``/``sigma``, label ``FD-digits``); the features are standardised
  by their mean and std over these digits (buffers stored with the weights), so ``mu`` ≈ 0 and
  ``diag(sigma)`` ≈ 1;
- ``revsde/weights/fd_digits.md``: the model card.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revsde.files import atomic_output  # noqa: E402
from revsde.apps.image.data import digit_labels, digits, shift_columns  # noqa: E402
from revsde.metrics.fid import FeatureStats, fid, kid, save_stats  # noqa: E402
from revsde.nets import digits_classifier as dc  # noqa: E402

HELD_OUT = 300


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 1 px horizontally and vertically and add N(0, s²) noise, s ~ U[0, 0.2]."""
    b = x.shape[0]
    x = shift_columns(x, torch.randint(-1, 2, (b,), generator=g))
    x = shift_columns(x.transpose(-1, -2), torch.randint(-1, 2, (b,), generator=g)).transpose(-1, -2)
    std = 0.2 * torch.rand(b, 1, 1, 1, generator=g)
    return x + std * torch.randn(x.shape, generator=g)


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "revsde" / "weights"), help="folder for the three files")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    x, y = digits(dc.SIZE), digit_labels()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    test, train = order[:HELD_OUT], order[HELD_OUT:]
    torch.manual_seed(args.seed)
    net = dc.DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    g = torch.Generator().manual_seed(args.seed + 1)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = train[torch.randint(len(train), (args.batch,), generator=g)]
        loss = F.cross_entropy(net(augment(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == args.steps:
            net.eval()
            print(f"step {step}: loss {loss.item():.4f}, held-out accuracy {accuracy(net, x[test], y[test]):.4f}",
                  flush=True)
            net.train()
    seconds = time.perf_counter() - start
    net.eval().requires_grad_(False)
    with torch.no_grad():
        raw = net.body(x)
        net.feature_mean.copy_(raw.mean(0))
        net.feature_std.copy_(raw.std(0).clamp_min(1e-6))
    acc_test, acc_train = accuracy(net, x[test], y[test]), accuracy(net, x[train], y[train])
    acc_all = accuracy(net, x, y)
    g_noise = torch.Generator().manual_seed(123)
    acc_noisy = accuracy(net, x[test] + 0.2 * torch.randn(x[test].shape, generator=g_noise), y[test])

    from revsde.nets.model_files import save_tensors

    meta = {"format": dc.FORMAT, "width": "32", "feature_dim": str(dc.FEATURE_DIM),
            "held_out_accuracy": f"{acc_test:.4f}", "steps": str(args.steps), "seed": str(args.seed)}
    weights = out / "fd_digits.safetensors"
    with atomic_output(weights) as f:
        f.write(save_tensors(net.state_dict(), meta))  # with the tensors' checksum, verified on load

    # Reference statistics of all the digits, through the extractor exactly as users will load it.
    extractor = dc.load_fd_extractor(weights)
    with torch.no_grad():
        features = extractor(x).double()
    stats = FeatureStats(label=extractor.label).update(features)
    save_stats(out / "fd_digits_ref.npz", stats.mean, stats.cov, label=extractor.label)

    # Scales to read FD-digits by: two random halves of the real digits, and the digits degraded.
    half = torch.randperm(len(x), generator=torch.Generator().manual_seed(7))
    a, b = features[half[:898]], features[half[898:]]
    split_fd = fid(FeatureStats(label=extractor.label).update(a), FeatureStats(label=extractor.label).update(b))
    split_kid = kid(a, b, subsets=100, subset_size=800, generator=torch.Generator().manual_seed(0))[0]
    half_fd = fid(FeatureStats(label=extractor.label).update(a), stats)
    degraded = {}
    with torch.no_grad():
        for name, z in (("noise std 0.1", x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))),
                        ("noise std 0.3", x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))),
                        ("blurred (3×3 box)", F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))):
            f_z = extractor(z).double()
            degraded[name] = (fid(FeatureStats(label=extractor.label).update(f_z), stats),
                              kid(f_z, features, subsets=100, subset_size=1000,
                                  generator=torch.Generator().manual_seed(0))[0])

    command = "python " + " ".join(shlex.quote(a) for a in ["scripts/train_fd_extractor.py", *(argv or sys.argv[1:])])
    n_params = sum(p.numel() for p in net.parameters())
    lines = [
        "# revsde feature extractor: FD-digits",
        "",
        f"A small CNN classifier ({n_params / 1e3:.0f} k parameters) of scikit-learn's 8×8 digits upsampled to "
        "16×16; its 64-d penultimate layer (pre-activation, standardised per dimension over the 1797 digits) is "
        "the feature space of **FD-digits**, the Fréchet distance the built-in image model is measured by. It is "
        "not FID: the Inception network of FID was never involved, and distances in this space are labelled `FD-digits` everywhere.",
        "",
        "## Use",
        "",
        "```python",
        "from revsde.nets.digits_classifier import load_fd_extractor",
        "from revsde.metrics.fid import FeatureStats, fid, load_stats",
        "extractor = load_fd_extractor()             # (B, 1, 16, 16) in [-1, 1] -> (B, 64); label 'FD-digits'",
        "ref = load_stats('revsde/weights/fd_digits_ref.npz')",
        "score = fid(FeatureStats(label=extractor.label).update(extractor(samples)), ref)",
        "```",
        "",
        "## Training",
        "",
        f"- command: `{command}`",
        f"- data: `sklearn.datasets.load_digits` (1797 images, values 0..16) as `revsde.apps.image.data.digits(16)`: "
        f"v/8 − 1, bicubic upsampling 8→16, clamped to [−1, 1]. {len(x) - HELD_OUT} trained on, {HELD_OUT} held "
        f"out (a fixed permutation, seed {args.seed}).",
        "- augmentation: random shifts of −1, 0 or +1 px horizontally and vertically (background −1 fills in), "
        "Gaussian pixel noise of std ~ U[0, 0.2]",
        f"- {args.steps} steps, batch {args.batch}, Adam lr {args.lr:g} cosine-decayed to 0, cross-entropy",
        f"- wall time: {seconds / 60:.1f} min on {args.threads} CPU thread(s) ({platform.machine()}, "
        f"torch {torch.__version__})",
        "",
        "## Accuracy",
        "",
        "| images | accuracy |",
        "|---|---:|",
        f"| held out ({HELD_OUT}) | {acc_test:.4f} |",
        f"| held out + N(0, 0.2²) pixel noise | {acc_noisy:.4f} |",
        f"| trained on ({len(x) - HELD_OUT}) | {acc_train:.4f} |",
        f"| all {len(x)} | {acc_all:.4f} |",
        "",
        "## Reference statistics and scale",
        "",
        "`fd_digits_ref.npz` holds the mean `mu` and covariance `sigma` (float64, pytorch-fid's keys) of the "
        f"features of all {len(x)} digits, with `label` = `FD-digits`. To read FD-digits values by:",
        "",
        "| compared with the reference | FD-digits | KID |",
        "|---|---:|---:|",
        f"| two random halves of the digits, against each other (898 / 899) | {split_fd:.3f} | {split_kid:.4f} |",
        f"| one random half (898) | {half_fd:.3f} | |",
        *(f"| all digits, {name} | {v[0]:.3f} | {v[1]:.4f} |" for name, v in degraded.items()),
        "",
        "KID: torch-fidelity's estimator (`revsde.metrics.fid.kid`, cubic kernel, mean of 100 subsets).",
        "",
    ]
    with atomic_output(out / "fd_digits.md") as f:
        f.write("\n".join(lines).encode())
    print(json.dumps({"held_out_accuracy": acc_test, "all_accuracy": acc_all, "noisy_accuracy": acc_noisy,
                      "seconds": seconds, "split_fd": split_fd, "half_fd": half_fd, "degraded": degraded}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
