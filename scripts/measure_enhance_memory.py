"""Peak memory of ``revsde enhance`` on a 30-second and a 10-minute file (the issue's target: ≤ 1.5×).

    python scripts/measure_enhance_memory.py [--model builtin|PATH] [--nfe 2] [--minutes 10]

Each run is a fresh process (``python -m revsde enhance ...``) whose peak resident set size the
kernel reports (``ru_maxrss`` of the waited-for child), so the interpreter, torch and the model count
in both and only what grows with the file's length makes the difference. The inputs are noisy
speech-like signals (held-out test utterances tiled to length, plus white noise) at 16 kHz, written
as 16-bit WAV into a temporary folder. Prints a markdown table; ``--json`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Held-out test utterances back to back (tiled to ``seconds``) plus white noise at about 5 dB SNR."""
    from revsde.apps.speech.data import test_set

    clean = np.concatenate([p.clean for p in test_set()])
    n = int(seconds * rate)
    x = np.resize(clean, n).astype(np.float32)
    noise = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    x += noise * (np.sqrt(np.mean(x**2)) / 10 ** (5 / 20))
    return 0.9 * x / np.abs(x).max()


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """``(peak RSS in MiB, seconds)`` of one child process running ``command``."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    stderr = proc.stderr.read()  # until the child closes it (it exits)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} ... failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return rusage.ru_maxrss / 1024, seconds  # Linux reports KiB


def main(argv=None) -> int:
    import soundfile as sf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--nfe", type=int, default=2, help="NFE per window (memory does not depend on it)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long file (default: 10)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, seconds in (("30 s", 30.0), (f"{args.minutes:g} min", 60.0 * args.minutes)):
            src = Path(tmp) / f"in_{int(seconds)}.wav"
            sf.write(src, speech_like(seconds), 16000, subtype="PCM_16")
            command = [sys.executable, "-c",
                       f"import torch; torch.set_num_threads({args.threads}); from revsde.cli import main; "
                       f"raise SystemExit(main(['enhance', {str(src)!r}, '-o', {str(Path(tmp) / 'out')!r}, "
                       f"'--model', {args.model!r}, '--nfe', '{args.nfe}', '--no-progress']))"]
            rss, wall = peak_rss_mib(command)
            rows.append({"file": label, "seconds_of_audio": seconds, "peak_rss_mib": rss, "wall_s": wall})
            print(f"{label}: peak RSS {rss:.0f} MiB, {wall:.0f} s", flush=True)
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print("\n| file | peak RSS (MiB) | wall (s) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['file']} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.0f} |")
    print(f"\nratio long / short: {ratio:.3f} (target ≤ 1.5)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio, "model": args.model, "nfe": args.nfe},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
