"""The bench harness: the cache resumes exactly and refuses other settings, seeds and cells are split
across ranks without changing any result (a real 2-process gloo group), and ``revsde bench`` resumes
and runs under torchrun."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from revsde.apps.bench.fingerprints import file_fingerprint, fingerprint
from revsde.apps.bench.harness import Cache, Cell, Dist, run_cells, shard_seeds
from revsde.cli import main

SETTINGS = {"task": "toy", "n_samples": 100, "seed": 0}


def cells_of(n: int = 7) -> list[Cell]:
    return [Cell(label, nfe, {"sampler": label, "options": {"order": 2}}, "g")
            for label in ("a", "b") for nfe in (5, 10, 20)][:n] + [Cell("floor", None, {}, "g")][:max(0, n - 6)]


def toy_evaluate(cell: Cell) -> dict:
    """A record that depends on the cell only: a draw from a generator seeded by the cell."""
    gen = torch.Generator().manual_seed(len(cell.label) * 1000 + (cell.nfe or 0) + ord(cell.label[0]))
    return {"nfe": cell.nfe, "value": float(torch.randn(64, generator=gen, dtype=torch.float64).square().mean()),
            "pair": (1, 2), "seconds": 0.0}


# --- the cache ------------------------------------------------------------------------------------
def test_cache_round_trip_gives_back_what_the_run_saw(tmp_path):
    path = tmp_path / "c.jsonl"
    first = run_cells(cells_of(), toy_evaluate, Cache(path, SETTINGS))
    assert first[0]["pair"] == [1, 2]  # records are kept as JSON gives them back, tuples as lists
    again = Cache(path, dict(SETTINGS))
    assert [again.get(c) for c in cells_of()] == first
    assert first[0]["label"] == "a" and first[0]["group"] == "g" and first[0]["target_nfe"] == 5
    assert json.loads(path.read_text().splitlines()[0]) == {"settings": SETTINGS}
    assert Cache(path, SETTINGS, resume=False).records == {}  # --no-resume: the file starts afresh
    assert len(path.read_text().splitlines()) == 1


def test_torn_last_line_is_ignored_and_cut_off(tmp_path):
    path = tmp_path / "c.jsonl"
    run_cells(cells_of(3), toy_evaluate, Cache(path, SETTINGS))
    text = path.read_text()
    path.write_text(text[:-25])  # killed while writing the third record
    cache = Cache(path, SETTINGS)
    assert [cache.get(c) is not None for c in cells_of(3)] == [True, True, False]
    cache.put(cells_of(3)[2], toy_evaluate(cells_of(3)[2]))  # the rerun cell lands on a line of its own
    assert all(Cache(path, SETTINGS).get(c) is not None for c in cells_of(3))


def test_other_settings_are_refused_naming_the_difference(tmp_path):
    path = tmp_path / "c.jsonl"
    Cache(path, SETTINGS)
    with pytest.raises(ValueError, match=r"n_samples differ.*cached 100, now 200.*--no-resume"):
        Cache(path, {**SETTINGS, "n_samples": 200})
    with pytest.raises(ValueError, match="model differ"):
        Cache(path, {**SETTINGS, "model": "x"})
    (tmp_path / "junk.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="not a revsde bench cache"):
        Cache(tmp_path / "junk.jsonl", SETTINGS)


def test_resume_evaluates_only_the_missing_cells(tmp_path):
    path, calls, lines = tmp_path / "c.jsonl", [], []

    def interrupted(cell):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cell)
        return toy_evaluate(cell)

    with pytest.raises(KeyboardInterrupt):
        run_cells(cells_of(), interrupted, Cache(path, SETTINGS))
    assert len(calls) == 3
    calls.clear()

    def counted(cell):
        calls.append(cell)
        return toy_evaluate(cell)

    resumed = run_cells(cells_of(), counted, Cache(path, SETTINGS), log=lines.append)
    assert calls == cells_of()[3:]
    assert lines == [f"resumed: 3 of 7 cells from {path}"]
    assert resumed == run_cells(cells_of(), toy_evaluate, Cache(None, SETTINGS))
    calls.clear()
    run_cells(cells_of(), counted, Cache(path, SETTINGS))
    assert calls == []


def test_fingerprints_follow_content_not_identity(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert fingerprint(a) != fingerprint(b)
    (tmp_path / "w1").write_bytes(b"abc")
    (tmp_path / "w2").write_bytes(b"abd")
    assert file_fingerprint(tmp_path / "w1").split(":")[1] == "3"
    assert file_fingerprint(tmp_path / "w1").split(":")[2] != file_fingerprint(tmp_path / "w2").split(":")[2]


def test_restore_bench_resumes_and_refuses_another_model(tmp_path):
    from revsde.apps.restore import bench as restore_bench
    from revsde.nets.irsde_unet import ConditionalUNet, irsde_score_model
    from revsde.sde import MRSDE

    def model(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return irsde_score_model(ConditionalUNet(nf=8, depth=2).eval(), MRSDE())

    kwargs = dict(nfes=(2,), configs=[("mrs ODE data 1", "mrs", {"order": 1})], crop=16, images=["camera"],
                  reference_nfe=2, cache_path=tmp_path / "c.jsonl")
    first = restore_bench.run_restore_bench("denoise", model(0), **kwargs)
    lines = []
    again = restore_bench.run_restore_bench("denoise", model(0), log=lines.append, **kwargs)
    assert lines == [f"resumed: 2 of 2 cells from {tmp_path / 'c.jsonl'}"]
    assert again.rows == first.rows and again.reference == first.reference
    with pytest.raises(ValueError, match="model differ"):
        restore_bench.run_restore_bench("denoise", model(1), **kwargs)


# --- splitting the work -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 64, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_seeds_covers_every_seed_once_in_equal_batch_counts(n, world):
    seeds = list(range(1000, 1000 + n))
    for max_batch in (1, 4, 16, 256):
        shards = [shard_seeds(seeds, rank, world, max_batch) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1  # every rank runs the same number of rounds
        assert all(len(batch) <= max_batch for s in shards for batch in s)
        got = sorted(seed for s in shards for batch in s for seed in batch)
        assert got == seeds  # every seed exactly once, whatever max_batch
    with pytest.raises(ValueError, match="rank"):
        shard_seeds(seeds, world, world, 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def draw(seeds: list[int]) -> torch.Tensor:
    """EDM's scheme: sample ``b`` from its own generator seeded ``seeds[b]``."""
    return torch.stack([torch.randn(3, 4, generator=torch.Generator().manual_seed(s)) for s in seeds]) if seeds \
        else torch.empty(0, 3, 4)


def two_rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    dist = Dist.from_env()
    try:
        assert (dist.rank, dist.world, dist.initialised_here) == (rank, 2, True)
        out = Path(out)
        # cells: rank 0 resumes from a cache holding two cells; rank 1 holds none of its own
        cache = Cache(out / "cells.jsonl", SETTINGS, writer=dist.main) if dist.main else Cache(None, SETTINGS)
        mine = []

        def evaluate(cell):
            mine.append(cell.key)
            return toy_evaluate(cell)

        records = run_cells(cells_of(), evaluate, cache, dist=dist, shard="cells")
        # seeds: each rank draws its shard, one generator per sample; gathered in seed order
        seeds = list(range(11))
        local = [s for batch in shard_seeds(seeds, dist.rank, dist.world, max_batch=2) for s in batch]
        got_seeds, x = dist.gather_by_seed(local, draw(local))
        (out / f"rank{rank}.json").write_text(json.dumps({"records": records, "evaluated": mine, "seeds": got_seeds}))
        torch.save(x, out / f"rank{rank}.pt")
    finally:
        dist.close()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """A real 2-process gloo group (the environment torchrun gives), run once for the tests below."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ranks")
    run_cells(cells_of()[:2], toy_evaluate, Cache(out / "cells.jsonl", SETTINGS))  # an earlier, interrupted run
    context = mp.start_processes(two_rank_worker, args=(free_port(), str(out)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 60
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process group did not finish in 60 s")
    return out


def test_cells_split_across_two_ranks_give_the_single_process_records(two_ranks):
    single = run_cells(cells_of(), toy_evaluate, Cache(None, SETTINGS))
    ranks = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(ranks[0]["records"]) == strip(single) and strip(ranks[1]["records"]) == strip(single)
    # the 5 cells the cache lacked, split between the ranks, none twice
    evaluated = ranks[0]["evaluated"] + ranks[1]["evaluated"]
    assert sorted(evaluated) == sorted(c.key for c in cells_of()[2:]) and ranks[0]["evaluated"] and ranks[1]["evaluated"]
    assert strip([Cache(two_ranks / "cells.jsonl", SETTINGS).get(c) for c in cells_of()]) == strip(single)


def test_gather_by_seed_on_two_ranks_equals_one_process(two_ranks):
    seeds = list(range(11))
    local = [s for batch in shard_seeds(seeds, 0, 1, max_batch=2) for s in batch]
    want_seeds, want = Dist().gather_by_seed(local, draw(local))
    for rank in (0, 1):
        got = json.loads((two_ranks / f"rank{rank}.json").read_text())["seeds"]
        assert got == want_seeds == seeds
        assert torch.equal(torch.load(two_ranks / f"rank{rank}.pt"), want)


# --- the command ------------------------------------------------------------------------------------
TINY = ["bench", "gmm", "--problems", "mr", "--nfe", "5,10", "--n", "200", "--repeats", "1", "--no-diffusers",
        "--only", "posterior", "--only", "mrs ODE 2 data"]


def metrics(folder: Path) -> list:
    data = json.loads((folder / "bench_gmm.json").read_text())
    return [(r["problem"], r["label"], r["target_nfe"], r["nfe"], r["fd"], r["swd"]) for r in data["records"]], \
        data["floors"]


def test_bench_command_run_twice_evaluates_nothing_the_second_time(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(TINY + ["-o", str(out)]) == 0
    first = capsys.readouterr().out
    cache = out / "bench_gmm.cache.jsonl"
    assert "resumed" not in first and cache.is_file()
    before, results = cache.read_bytes(), metrics(out)
    assert main(TINY + ["-o", str(out)]) == 0
    assert f"resumed: 5 of 5 cells from {cache}" in capsys.readouterr().out  # 4 cells and the floor
    assert cache.read_bytes() == before and metrics(out) == results  # nothing evaluated, nothing appended
    assert main(TINY + ["-o", str(out), "--n", "300"]) == 2
    assert "n_samples differ" in capsys.readouterr().err
    assert main(TINY + ["-o", str(out), "--no-resume"]) == 0
    assert "resumed" not in capsys.readouterr().out and metrics(out) == results


def test_bench_under_torchrun_equals_one_process(tmp_path, capsys):
    """``torchrun --nproc_per_node=2 -m revsde -- bench …`` (the ``--`` keeps torchrun's own parser off
    ``--n``) on CPU with gloo: the same JSON as a single process, one cache written by rank 0."""
    assert main(TINY + ["-o", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "revsde", "--", *TINY, "-o", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 3  # rank 0 alone prints and writes
    assert metrics(tmp_path / "two") == metrics(tmp_path / "one")
    lines = (tmp_path / "two" / "bench_gmm.cache.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 5
