"""Peak memory of ``revsde restore`` against image size, with the default memory budget and without one.

    python scripts/measure_restore_memory.py [--sizes 512,1024,2048,3000] [--untiled-up-to 1024] [--nfe 1]

Each run is a fresh process (``python -m revsde restore ...``) whose peak resident set size the kernel
reports (``ru_maxrss`` of the waited-for child), so the interpreter, torch and the model count in every
row. The inputs are photos of scikit-image tiled to size (8-bit RGB PNG). Rows: the default
``--max-memory`` (768M: an image that needs more is restored in the largest tiles that fit) and, up to
``--untiled-up-to``, ``--max-memory none`` (the whole image in one network call, as before automatic
tiling). Prints a markdown table; ``--json`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_enhance_memory import ROOT, peak_rss_mib  # noqa: E402


def photo(size: int) -> np.ndarray:
    """scikit-image's astronaut, tiled (mirrored) to ``size`` × ``size``, 8-bit RGB."""
    from skimage import data

    base = data.astronaut()
    reps = -(-size // base.shape[0])
    tiled = np.block([[[base if (i + j) % 2 == 0 else base[::-1]] for j in range(reps)] for i in range(reps)])
    return np.ascontiguousarray(tiled.reshape(reps * base.shape[0], reps * base.shape[1], 3)[:size, :size])


def main(argv=None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024,2048,3000")
    parser.add_argument("--untiled-up-to", type=int, default=1024, help="also run --max-memory none up to this size")
    parser.add_argument("--nfe", type=int, default=1, help="NFE per image or tile (memory does not depend on it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            src = Path(tmp) / f"photo_{size}.png"
            Image.fromarray(photo(size)).save(src)
            for budget in ("768M", "none") if size <= args.untiled_up_to else ("768M",):
                command = [sys.executable, "-m", "revsde", "restore", str(src), "-o", str(Path(tmp) / f"out_{budget}"),
                           "--sampler", "mrs", "--nfe", str(args.nfe), "--max-memory", budget,
                           "--threads", str(args.threads), "--no-progress"]
                rss, wall = peak_rss_mib(command)
                rows.append({"size": size, "max_memory": budget, "peak_rss_mib": rss, "wall_s": wall,
                             "bytes_per_pixel": rss * 2**20 / size**2})
                print(f"{size}² --max-memory {budget}: peak RSS {rss:.0f} MiB, {wall:.0f} s", flush=True)
    print("\n| image | --max-memory | peak RSS (MiB) | RSS per pixel (B) | wall (s) |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']}² | {r['max_memory']} | {r['peak_rss_mib']:.0f} | {r['bytes_per_pixel']:.0f} | "
              f"{r['wall_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "nfe": args.nfe, "threads": args.threads}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
