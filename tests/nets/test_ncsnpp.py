"""SGMSE+'s NCSN++ backbone: official key layout and sizes, numerics against the official code, FIR
resampling, the ÷t placement of each variant, input checks."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from revsde.nets.ncsnpp import BACKBONES, NCSNpp, downsample2x, ncsnpp_backbone, upsample2x

# ---------------------------------------------------------------- layout of the official checkpoints

# sha256 of "key (shape)" lines, in state-dict order, of the official classes at their defaults
# (sgmse/backbones/ncsnpp.py and ncsnpp_48k.py, sp-uhh/sgmse @ae690e8, instantiated on CPU).
OFFICIAL_DIGESTS = {
    "ncsnpp": "dc6b6c97a6caa59e65cb216fe33151e9ca13f1483cca5d60830088dc8a46f76c",
    "ncsnpp_48k": "cbaef7298811b9cb65383aa58dfac6c2475ed3814007bc33da6c529a80f0cd77",
}
# A sample of the official keys and shapes (same run): every kind of module and each attention block.
EXPECTED_NCSNPP = {
    "output_layer.weight": (2, 4, 1, 1), "output_layer.bias": (2,),
    "all_modules.0.W": (128,),                                  # Gaussian Fourier W, fixed
    "all_modules.1.weight": (512, 256), "all_modules.2.weight": (512, 512),
    "all_modules.3.weight": (128, 4, 3, 3),                     # input conv: [x.re, x.im, y.re, y.im]
    "all_modules.4.Conv_0.weight": (128, 128, 3, 3), "all_modules.4.Dense_0.weight": (128, 512),
    "all_modules.6.Conv_2.weight": (128, 128, 1, 1),            # down block: 1×1 shortcut
    "all_modules.7.Conv_0.weight": (128, 4, 1, 1),              # input-skip combiner
    "all_modules.12.Conv_2.weight": (256, 128, 1, 1),
    "all_modules.21.NIN_0.W": (256, 256), "all_modules.21.NIN_3.b": (256,),
    "all_modules.23.GroupNorm_0.weight": (256,), "all_modules.33.NIN_2.W": (256, 256),
    "all_modules.35.Conv_0.weight": (256, 512, 3, 3),
    "all_modules.38.weight": (256,), "all_modules.39.weight": (4, 256, 3, 3),   # output-skip head
    "all_modules.40.Conv_2.weight": (256, 256, 1, 1),           # up block
    "all_modules.50.NIN_1.W": (256, 256),
    "all_modules.72.Conv_0.weight": (128, 256, 3, 3),
    "all_modules.75.weight": (128,), "all_modules.76.weight": (4, 128, 3, 3), "all_modules.76.bias": (4,),
}


def _digest(state: dict) -> str:
    return hashlib.sha256("\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items()).encode()).hexdigest()


@pytest.fixture(scope="module")
def full_nets():
    """The official-size backbones on the meta device: shapes and names without 260 MB of weights."""
    with torch.device("meta"):
        return {name: ncsnpp_backbone(name) for name in BACKBONES}


def test_default_layout_matches_official(full_nets):
    net = full_nets["ncsnpp"]
    state = net.state_dict()
    assert len(state) == 647 and len(net.all_modules) == 77
    assert sum(v.numel() for v in state.values()) == 65_590_822
    assert list(state)[:3] == ["output_layer.weight", "output_layer.bias", "all_modules.0.W"]
    assert list(state)[-2:] == ["all_modules.76.weight", "all_modules.76.bias"]
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    wrong = {k: (shapes.get(k), want) for k, want in EXPECTED_NCSNPP.items() if shapes.get(k) != want}
    assert not wrong, wrong
    assert [k for k in state if k.endswith(".NIN_0.W")] == [f"all_modules.{i}.NIN_0.W" for i in (21, 23, 33, 50)]
    suffixes = [k.rsplit(".", 1)[1] for k in state]
    assert [suffixes.count(s) for s in ("weight", "bias", "W", "b")] == [307, 307, 17, 16]
    assert _digest(state) == OFFICIAL_DIGESTS["ncsnpp"]  # all 647 names and shapes, in order
    # the EMA list is positional over parameters(): their order must be the state dict's
    assert [k for k, _ in net.named_parameters()] == list(state) and not list(net.buffers())
    fixed = [k for k, p in net.named_parameters() if not p.requires_grad]
    assert fixed == ["all_modules.0.W"]
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 65_590_694


def test_variant_layouts(full_nets):
    state_48k = full_nets["ncsnpp_48k"].state_dict()
    assert (len(state_48k), len(full_nets["ncsnpp_48k"].all_modules)) == (581, 56)
    assert sum(v.numel() for v in state_48k.values()) == 64_739_854
    assert _digest(state_48k) == OFFICIAL_DIGESTS["ncsnpp_48k"]
    assert tuple(state_48k["all_modules.55.weight"].shape) == (4, 128, 3, 3)  # final GroupNorm-conv, no pyramid
    v2 = full_nets["ncsnpp_v2"].state_dict()
    assert _digest(v2) == OFFICIAL_DIGESTS["ncsnpp"]  # same modules as ncsnpp
    assert full_nets["ncsnpp_v2"].time_scaling == "none"
    assert full_nets["ncsnpp_48k"].time_scaling == "after_output_layer"


# ---------------------------------------------------------------- numerics against the official code


def _fill(net: torch.nn.Module) -> None:
    """Deterministic, seed-free, non-zero parameters (init_scale 0 would leave layers at 1e-10)."""
    state = {}
    for i, (k, v) in enumerate(net.state_dict().items()):
        wave = torch.sin(1.3 * torch.arange(v.numel(), dtype=torch.float64) + i).reshape(v.shape)
        if k == "all_modules.0.W":
            state[k] = 3 * wave
        elif v.ndim == 1:  # GroupNorm scales around 1, biases around 0
            state[k] = 1 + 0.2 * wave if k.endswith("weight") else 0.1 * wave
        elif k.endswith(".W"):  # NIN, stored [in, out]
            state[k] = wave * (1.5 / math.sqrt(v.shape[0]))
        else:
            state[k] = wave * (1.5 / math.sqrt(v[0].numel()))
    net.load_state_dict(state)


SMALL = dict(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32)


def _inputs():
    g = torch.arange(2 * 32 * 12, dtype=torch.float64).reshape(2, 1, 32, 12)
    x = torch.complex(0.5 * torch.sin(0.37 * g), 0.4 * torch.cos(0.23 * g))
    y = torch.complex(0.3 * torch.cos(0.11 * g + 1), 0.6 * torch.sin(0.19 * g))
    return x, y, torch.tensor([0.05, 0.8], dtype=torch.float64)


# Golden values from the official classes (sp-uhh/sgmse @ae690e8, native upfirdn2d, float64) on the same
# parameters and inputs: out[0,0,0,0] re/im, out[1,0,31,11] re/im, out[1,0,7,5].re, out[0,0,20,3].im,
# Σ re, Σ im, Σ |out|². The config has attention in the down path, the bottleneck and the up path.
GOLDEN = {
    ("ncsnpp", True): [-4.9377309929315985, 4.925339188419226, 0.3120231737902034, 0.606594123774801,
                       -0.44930049193469623, 27.009138436356192, -581.6433720201175, 2181.5521921775767,
                       236963.47081026982],
    ("ncsnpp", False): [-9.228007610424308, -6.149361034511364, 0.20282710385033853, 0.6539594105056111,
                        -0.1426444182086331, 45.04469702420502, -1058.8848858284039, 2501.2959890619723,
                        227363.46857282313],
    ("ncsnpp_48k", True): [1.6114652195160597, -5.10841362128954, 0.24130521158340373, 0.5515660533770722,
                           1.7459334690087716, 34.7261201847452, 1734.4127206594108, 531.9209377130574,
                           217896.30787163074],
    ("ncsnpp_v2", True): [-0.16694680608982976, 0.3171089545777497, 0.2664479587283206, 0.5001894032633751,
                          -0.342610973851599, 1.4212989169745982, 9.475304609331534, 261.06599438703205,
                          1112.583578049683],
}


@pytest.mark.parametrize("name,centered", list(GOLDEN), ids=[f"{n}-centered={c}" for n, c in GOLDEN])
def test_output_matches_official_implementation(name, centered):
    kwargs = {} if centered else {"centered": False}
    net = ncsnpp_backbone(name, **SMALL, **kwargs).double()
    _fill(net)
    x, y, t = _inputs()
    with torch.no_grad():
        out = net(x, y, t)
    assert out.shape == (2, 1, 32, 12) and out.dtype == torch.complex128
    got = torch.stack([out[0, 0, 0, 0].real, out[0, 0, 0, 0].imag, out[1, 0, 31, 11].real, out[1, 0, 31, 11].imag,
                       out[1, 0, 7, 5].real, out[0, 0, 20, 3].imag, out.real.sum(), out.imag.sum(),
                       out.abs().square().sum()])
    torch.testing.assert_close(got, torch.tensor(GOLDEN[(name, centered)], dtype=torch.float64), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_division_by_t_sits_where_each_variant_puts_it(name):
    """ncsnpp: output_layer(h / t); ncsnpp_48k: output_layer(h) / t; ncsnpp_v2: output_layer(h), with h
    the 4-channel image the U-Net makes (taken from a twin that does not divide)."""
    net = ncsnpp_backbone(name, **SMALL).double()
    _fill(net)
    twin = ncsnpp_backbone(name, **SMALL, time_scaling="none").double()
    twin.load_state_dict(net.state_dict())
    captured = {}
    twin.output_layer.register_forward_pre_hook(lambda module, args: captured.update(h=args[0]))
    x, y, t = _inputs()
    with torch.no_grad():
        out = net(x, y, t)
        twin(x, y, t)
        h, tt, layer = captured["h"], t[:, None, None, None], net.output_layer
        want = {"ncsnpp": layer(h / tt), "ncsnpp_48k": layer(h) / tt, "ncsnpp_v2": layer(h)}[name]
    assert layer.bias.abs().min() > 0.01 and (layer(h / tt) - layer(h) / tt).abs().max() > 0.1  # placements differ
    torch.testing.assert_close(out, torch.complex(want[:, 0], want[:, 1])[:, None], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- FIR resampling


def _upfirdn(x, taps, up, down):
    """StyleGAN2's upfirdn2d as its definition: zero-stuff, pad, correlate with the flipped filter, decimate."""
    k = torch.outer(torch.tensor(taps, dtype=x.dtype), torch.tensor(taps, dtype=x.dtype))
    k = k / k.sum() * up**2
    p = len(taps) - 2
    pad = ((p + 1) // 2 + up - 1, p // 2) if up > 1 else ((p + 1) // 2, p // 2)
    b, c, h, w = x.shape
    z = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
    z[..., ::up, ::up] = x
    z = F.pad(z.reshape(b * c, 1, h * up, w * up), (pad[0], pad[1], pad[0], pad[1]))
    out = F.conv2d(z, k.flip(0, 1)[None, None])[..., ::down, ::down]
    return out.reshape(b, c, *out.shape[-2:])


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1), (1, 1), (1, 2, 3, 4)])
def test_fir_resampling_is_upfirdn2d(taps):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    torch.testing.assert_close(upsample2x(x, taps), _upfirdn(x, taps, 2, 1), rtol=0, atol=1e-14)
    torch.testing.assert_close(downsample2x(x, taps), _upfirdn(x, taps, 1, 2), rtol=0, atol=1e-14)
    if taps == (1, 2, 3, 4):  # asymmetric: checks the flip, but its two phases have unequal DC gain
        return
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)  # unit DC gain away from the zero-padded border
    torch.testing.assert_close(upsample2x(ones, taps)[..., 4:-4, 4:-4], torch.ones(1, 1, 8, 8, dtype=torch.float64))
    torch.testing.assert_close(downsample2x(ones, taps)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2, dtype=torch.float64))


def test_naive_resampling():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(upsample2x(x), x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    torch.testing.assert_close(downsample2x(x), F.avg_pool2d(x, 2))


# ---------------------------------------------------------------- construction and inputs


def test_initialisation_follows_ddpm_defaults():
    torch.manual_seed(0)
    net = NCSNpp(**SMALL)
    m = net.all_modules
    assert not m[0].W.requires_grad and 8 < m[0].W.std() < 30  # W ~ N(0, 16²), 8 samples
    assert m[4].Conv_1.weight.abs().max() < 1e-4 and m[4].Conv_0.weight.abs().max() > 1e-2  # init_scale 0 → 1e-10
    attn = next(mod for mod in m if hasattr(mod, "NIN_3"))
    assert attn.NIN_3.W.abs().max() < 1e-4 and attn.NIN_0.W.abs().max() > 1e-2
    assert all(mod.bias.abs().max() == 0 for mod in m if isinstance(mod, torch.nn.Conv2d))
    # the DDPM bound sqrt(3 scale / fan_avg) for the input conv: fan_avg = (8 + 4)·9/2
    assert m[3].weight.abs().max() <= math.sqrt(3 / 54) and m[3].weight.abs().max() > 0.8 * math.sqrt(3 / 54)


def test_smoke_complex64_shapes_and_time_forms():
    """Smoke test (shapes, dtypes, scalar vs batch time), not a check of the maths."""
    torch.manual_seed(0)
    net = NCSNpp(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32).eval()
    x, y = torch.randn(3, 1, 32, 8, dtype=torch.complex64), torch.randn(3, 1, 32, 8, dtype=torch.complex64)
    with torch.no_grad():
        out = net(x, y, torch.full((3,), 0.4))
        scalar = net(x, y, 0.4)
        single = net(x[1:2], y[1:2], torch.tensor([0.4]))
    assert out.shape == x.shape and out.dtype == torch.complex64
    torch.testing.assert_close(out, scalar)
    torch.testing.assert_close(out[1:2], single, rtol=1e-5, atol=1e-5)


def test_bad_inputs_and_options_are_named():
    net = NCSNpp(**SMALL)
    x = torch.zeros(2, 1, 32, 12, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"complex x of shape \[B, 1, F, T\]"):
        net(x.real, x, 0.5)
    with pytest.raises(ValueError, match="complex y shaped like x"):
        net(x, x[:, :, :16], 0.5)
    with pytest.raises(ValueError, match=r"divisible by 4 \(got F=32, T=10\)"):
        net(x[..., :10], x[..., :10], 0.5)
    with pytest.raises(ValueError, match=r"\(2,\) tensor"):
        net(x, x, torch.ones(3))
    with pytest.raises(ValueError, match="progressive must be one of 'none', 'output_skip'"):
        NCSNpp(progressive="residual")
    with pytest.raises(ValueError, match="time_scaling must be one of"):
        NCSNpp(time_scaling="sigma")
    with pytest.raises(ValueError, match="GroupNorm"):
        NCSNpp(nf=132, ch_mult=(1,))
    with pytest.raises(ValueError, match="backbone must be one of ncsnpp, ncsnpp_48k, ncsnpp_v2"):
        ncsnpp_backbone("dcunet")
    with pytest.raises(ValueError, match="ncsnpp_v2 has no `centered`"):
        ncsnpp_backbone("ncsnpp_v2", centered=False)
