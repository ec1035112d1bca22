"""The ``revsde sample`` command and ``revsde.apps.sample_gmm``: files, numbers and error handling."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import revsde
from revsde.apps import sample_gmm
from revsde.files import atomic_output
from revsde.cli import main, parse_value
from fixtures import ROOT

REPO = ROOT


def run_revsde(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "revsde", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def printed(name: str, stdout: str) -> float:
    match = re.search(rf"^{name}: ([0-9.eE+-]+)", stdout, re.MULTILINE)
    assert match, f"no {name} line in:\n{stdout}"
    return float(match.group(1))


def test_sample_writes_files_and_reaches_the_exact_distribution(tmp_path):
    # ode_heun, 20 steps on the logsnr grid, VP: measured FD 0.0067 at seed 0 (0.0043–0.0067 over seeds
    # 0–4), which is sampling noise: 500 exact samples score 0.014 against the same moments. A
    # broken integration scores far above the bound, e.g. ode_euler with 3 steps: FD 0.109.
    result = run_revsde("sample", "--model", "gmm", "--n", "500", "--steps", "20",
                        "-o", "tmp/x.npz", "--plot", "tmp/x.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    npz, png = tmp_path / "tmp/x.npz", tmp_path / "tmp/x.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(npz, allow_pickle=False) as data:
        assert data["samples"].shape == (500, 2) and data["reference"].shape == (500, 2)
        assert data["exact_mean"].shape == (2,) and data["exact_cov"].shape == (2, 2)
        assert (str(data["sampler"]), str(data["sde"]), int(data["steps"]), int(data["seed"])) == ("ode_heun", "vp", 20, 0)
        assert int(data["nfe"]) == 40  # Heun: 2 evaluations per step, counted by the driver
        fd, swd = float(data["fd"]), float(data["swd"])
    assert "samples: 500" in result.stdout
    assert printed("NFE", result.stdout) == 40
    assert printed("FD", result.stdout) == pytest.approx(fd, abs=1e-6)
    assert printed("SWD", result.stdout) == pytest.approx(swd, abs=1e-6)
    assert fd < 0.02


def test_unknown_sampler_is_one_line_and_exit_2(tmp_path):
    result = run_revsde("sample", "--sampler", "nope", "--n", "10", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revsde: error: unknown sampler 'nope'")
    for name in revsde.samplers.available():
        assert name in lines[0]
    assert not (tmp_path / "out").exists()  # refused before any work


def test_mu_is_refused_for_sdes_without_mean_reversion(capsys, tmp_path):
    assert main(["sample", "--sde", "vp", "--mu", "1,2", "--n", "10", "-o", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("revsde: error: mu applies only to the mean-reverting sdes (mr, ouve)")
    assert len(err.strip().splitlines()) == 1


def test_bad_sampler_option_names_the_valid_ones(capsys, tmp_path):
    assert main(["sample", "--sampler", "pc", "--option", "snr=-1", "--n", "10", "-o", str(tmp_path / "x.npz")]) == 2
    assert "snr" in capsys.readouterr().err
    assert main(["sample", "--sampler", "pc", "--option", "bogus=1", "--n", "10", "-o", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "corrector_steps" in err


def test_existing_output_is_replaced_atomically(capsys, tmp_path):
    out, plot = tmp_path / "x.npz", tmp_path / "x.png"
    out.write_bytes(b"old")
    plot.write_bytes(b"old")
    args = ["sample", "--n", "50", "--steps", "5", "-o", str(out), "--plot", str(plot), "--no-progress"]
    assert main(args) == 0
    with np.load(out, allow_pickle=False) as data:
        assert data["samples"].shape == (50, 2)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz", "x.png"]  # no temporary files left


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as file:
            file.write(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.bin"]


def test_mr_euler_maruyama_reaches_the_exact_distribution():
    # IR-SDE with μ = (1, −0.5), Euler–Maruyama, 200 uniform steps, 4000 samples: measured FD 0.00122 at
    # seed 0 (0.00120 at seed 2), the size of the sampling noise at this n: 4000 exact samples score 0.00137
    # (fd_floor). The bound 0.004 is about 3× that; too few steps cross it (measured: 25 steps 0.011,
    # 10 steps 0.036).
    result = sample_gmm(sde="mr", sampler="euler_maruyama", steps=200, n=4000, seed=0)
    assert result.mu == (1.0, -0.5) and result.nfe == 200 and result.steps == 200
    assert result.fd < 0.004
    assert result.fd_floor < 0.004


def test_adaptive_sampler_ignores_steps():
    options = {"rtol": 1e-4, "atol": 1e-4}
    few = sample_gmm(sampler="ode_rk45", steps=3, n=200, options=options)
    many = sample_gmm(sampler="ode_rk45", steps=500, n=200, options=options)
    assert few.samples.equal(many.samples) and few.nfe == many.nfe
    assert few.nfe >= 2 + 6 * few.steps  # Hairer's initial step (2), then 6 evaluations per attempted step


def test_parse_value():
    assert [parse_value(v) for v in ("None", "true", "False", "3", "-2", "1e-3", "0.5", "ald")] == \
        [None, True, False, 3, -2, 1e-3, 0.5, "ald"]


def test_help_and_version(capsys):
    """Smoke test: the help lists every sampler, grid and SDE; --version prints the package version."""
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"revsde {revsde.__version__}"
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = capsys.readouterr().out
    for name in [*revsde.samplers.available(), *revsde.grids.available(), "vp", "subvp", "ve", "mr", "ouve"]:
        assert name in text


@pytest.mark.parametrize("args, message", [
    (["sample", "--steps", "ten"], "revsde sample: error: argument --steps: expected an integer (got 'ten') "
                                   "(see revsde sample --help)"),
    (["sample", "--sde", "xx"], "revsde sample: error: argument --sde: invalid choice: 'xx'"),
    (["restore", "a.png"], "revsde restore: error: the following arguments are required: -o/--output"),
    (["frobnicate"], "revsde: error: argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_argument_errors_are_one_line_not_the_usage_block(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(message), line


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["restore", "--help"], ["enhance", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    """``revsde --help``/``--version`` and a command's help print without importing torch (the 1–2 s that
    every sampling command pays); ``revsde sample --help`` lists the sampler registry, which needs it."""
    code = ("import sys\nfrom revsde.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('revsde'))" % args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "revsde" in done.stdout


def test_threads_flag_sets_torch_threads_and_the_default_respects_the_affinity(tmp_path, capsys):
    """--threads N sets torch's intra-op threads; without it torch's count stays, capped at the cores the
    process may use; 0 is refused; the OpenMP wait policy is passive unless the user set one."""
    import os

    import torch

    from revsde.cli.common import available_cores

    before = torch.get_num_threads()
    try:
        argv = ["sample", "--n", "20", "--steps", "2", "-o", str(tmp_path / "s.npz"), "--no-plot"]
        assert main([*argv, "--threads", "2"]) == 0 and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert main(argv) == 0 and torch.get_num_threads() == 1  # the default keeps a lower count
        torch.set_num_threads(available_cores() + 3)
        assert main(argv) == 0 and torch.get_num_threads() == available_cores()
        assert main([*argv, "--threads", "0"]) == 2
        assert "revsde: error: --threads must be >= 1 (got 0)" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    probe = ("import os\nfrom revsde.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
             "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for policy, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        extra = {} if policy is None else {"OMP_WAIT_POLICY": policy}
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True)
        assert out.stdout.split()[-1] == expected, out
