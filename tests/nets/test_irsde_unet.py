"""IR-SDE's ConditionalUNet: official key layout and sizes, numerics, padding, time, checkpoint loading."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from revsde import ScoreModel
from revsde import sde as S
from revsde.nets.irsde_unet import (OFFICIAL_CONFIGS, ChannelLayerNorm, ConditionalUNet, LinearAttention,
                                    SinusoidalPosEmb, irsde_score_model, load_irsde_checkpoint)

# ---------------------------------------------------------------- layout of the official checkpoints

# A few keys of every kind, with their shapes at nf=64, depth=4 (the deraining / deblurring / SISR nets),
# worked out by hand from codes/config/deraining/models/modules/{DenoisingUNet_arch,module_util}.py.
EXPECTED_64_4 = {
    "init_conv.weight": (64, 6, 7, 7),                     # cat([x − μ, μ]): 2·in_nc, 7×7, no bias
    "time_mlp.1.weight": (256, 64), "time_mlp.1.bias": (256,),
    "time_mlp.3.weight": (256, 256), "time_mlp.3.bias": (256,),
    "downs.0.0.mlp.1.weight": (128, 256), "downs.0.0.mlp.1.bias": (128,),
    "downs.0.0.block1.proj.weight": (64, 64, 3, 3), "downs.0.0.block2.proj.weight": (64, 64, 3, 3),
    "downs.0.2.fn.norm.g": (1, 64, 1, 1),
    "downs.0.2.fn.fn.to_qkv.weight": (384, 64, 1, 1),
    "downs.0.2.fn.fn.to_out.0.weight": (64, 128, 1, 1), "downs.0.2.fn.fn.to_out.0.bias": (64,),
    "downs.0.2.fn.fn.to_out.1.g": (1, 64, 1, 1),
    "downs.0.3.weight": (128, 64, 4, 4), "downs.0.3.bias": (128,),   # 4×4 stride-2 downsample
    "downs.2.1.block2.proj.weight": (256, 256, 3, 3),
    "downs.3.3.weight": (1024, 512, 3, 3),                 # last level: 3×3 conv, no bias
    "mid_block1.mlp.1.weight": (2048, 256), "mid_block1.block1.proj.weight": (1024, 1024, 3, 3),
    "mid_attn.fn.norm.g": (1, 1024, 1, 1), "mid_attn.fn.fn.to_qkv.weight": (384, 1024, 1, 1),
    "mid_attn.fn.fn.to_out.1.g": (1, 1024, 1, 1), "mid_block2.block2.proj.weight": (1024, 1024, 3, 3),
    "ups.0.0.block1.proj.weight": (1024, 1536, 3, 3), "ups.0.0.res_conv.weight": (1024, 1536, 1, 1),
    "ups.0.1.mlp.1.weight": (2048, 256), "ups.0.2.fn.fn.to_qkv.weight": (384, 1024, 1, 1),
    "ups.0.3.1.weight": (512, 1024, 3, 3), "ups.0.3.1.bias": (512,),  # Upsample: nearest ×2, conv at index 1
    "ups.2.3.1.weight": (128, 256, 3, 3),
    "ups.3.0.block1.proj.weight": (128, 192, 3, 3), "ups.3.1.res_conv.weight": (128, 192, 1, 1),
    "ups.3.3.weight": (64, 128, 3, 3),                     # top level: 3×3 conv, no bias
    "final_res_block.block1.proj.weight": (64, 128, 3, 3), "final_res_block.res_conv.weight": (64, 128, 1, 1),
    "final_res_block.mlp.1.weight": (128, 256),
    "final_conv.weight": (3, 64, 3, 3), "final_conv.bias": (3,),
}
ABSENT_64_4 = ["downs.3.3.bias", "ups.3.3.bias", "ups.3.3.1.weight", "downs.0.0.res_conv.weight",
               "init_conv.bias", "time_mlp.0.weight", "mid_attn.fn.fn.to_out.weight", "downs.0.0.block1.proj.bias"]


def test_full_size_layout_matches_official_checkpoints():
    net = ConditionalUNet(in_nc=3, out_nc=3, nf=64, depth=4)
    state = net.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    wrong = {k: (shapes.get(k), want) for k, want in EXPECTED_64_4.items() if shapes.get(k) != want}
    assert not wrong, wrong
    assert not [k for k in ABSENT_64_4 if k in state]
    assert len(state) == 151
    assert sum(v.numel() for v in state.values()) == 137_147_523  # 137.15 M
    assert all(v.dtype == torch.float32 for v in state.values())
    assert not list(net.buffers())  # every state entry is a trained parameter


def test_deshadow_size():
    with torch.device("meta"):
        net = ConditionalUNet(nf=32, depth=5)
    state = net.state_dict()
    assert sum(v.numel() for v in state.values()) == 135_346_755  # 135.35 M
    assert len(state) == 183  # one more level: 151 + 15 (down) + 17 (up)
    assert tuple(state["mid_block1.block1.proj.weight"].shape) == (1024, 1024, 3, 3)
    assert tuple(state["init_conv.weight"].shape) == (32, 6, 7, 7)


# ---------------------------------------------------------------- numerics


def _fill(net: torch.nn.Module) -> None:
    """Deterministic, seed-free parameters (so the golden values below do not depend on torch's RNG)."""
    state = {}
    for i, (k, v) in enumerate(net.state_dict().items()):
        wave = torch.sin(1.3 * torch.arange(v.numel(), dtype=torch.float64) + i).reshape(v.shape)
        if k.endswith(".g"):
            state[k] = 1 + 0.2 * wave
        elif v.ndim == 1:
            state[k] = 0.1 * wave
        else:
            state[k] = wave * (1.5 / math.sqrt(v[0].numel()))
    net.load_state_dict(state)


def test_output_matches_official_implementation():
    """Golden values from running the official ConditionalUNet (deraining arch, image-restoration-sde @2598d73)
    in float64 on the same deterministic parameters and inputs; odd H, W exercise the reflect pad."""
    net = ConditionalUNet(nf=16, depth=2).double()
    _fill(net)
    h, w = 13, 10
    grid = torch.arange(2 * 3 * h * w, dtype=torch.float64).reshape(2, 3, h, w)
    x = 0.5 + 0.4 * torch.sin(0.37 * grid)
    mu = 0.5 + 0.3 * torch.cos(0.21 * grid)
    with torch.no_grad():
        out = net(x, torch.tensor([5.0, 73.25], dtype=torch.float64), mu=mu)
    assert out.shape == (2, 3, h, w)
    got = torch.stack([*out[0, :, 0, 0], *out[1, :, 12, 9], out[0, 1, 6, 4], out[1, 2, 3, 7],
                       out.sum(), (out**2).sum()])
    want = torch.tensor([-0.12193759675172632, -0.058038093893042965, 0.09091844881265775,
                         -0.05909466127576521, -0.1854317901112182, -0.041169363699742625,
                         -0.009335953038714604, 0.013534827471465762, -25.31072459856733, 6.422353279878472],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_sinusoidal_embedding_formula():
    t = torch.tensor([0.0, 1.0, 37.5, 100.0])
    emb = SinusoidalPosEmb(8)(t)
    k = torch.arange(4, dtype=torch.float64)
    arg = t.double()[:, None] * torch.exp(-k * math.log(10000) / 3)[None]
    torch.testing.assert_close(emb.double(), torch.cat([arg.sin(), arg.cos()], 1), atol=2e-5, rtol=0)


def test_channel_layer_norm_and_linear_attention_definitions():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64)
    norm = ChannelLayerNorm(6).double()
    with torch.no_grad():
        norm.g.copy_(torch.linspace(0.5, 1.5, 6).reshape(1, 6, 1, 1))
    ln = F.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-3).permute(0, 3, 1, 2) * norm.g  # float64: eps 1e-3
    torch.testing.assert_close(norm(x), ln)

    attn = LinearAttention(6, heads=2, dim_head=4).double()
    q, k, v = attn.to_qkv(x).reshape(2, 3, 2, 4, 15).unbind(1)  # (b, head, d, n) each
    q = q.softmax(-2) * 4**-0.5
    k = k.softmax(-1)
    out = torch.einsum("bhde,bhdn->bhen", torch.einsum("bhdn,bhen->bhde", k, v / 15), q)
    torch.testing.assert_close(attn(x), attn.to_out(out.reshape(2, 8, 5, 3)))


def one_shot_linear_attention(attn: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """IR-SDE's layer as it computes it: the whole ``to_qkv`` output at once, then every head together."""
    b, _, h, w = x.shape
    q, k, v = (part.reshape(b, attn.heads, attn.dim_head, h * w) for part in attn.to_qkv(x).chunk(3, dim=1))
    q = q.softmax(dim=-2) * attn.scale
    context = k.softmax(dim=-1) @ (v / (h * w)).transpose(-1, -2)
    return attn.to_out((context.transpose(-1, -2) @ q).reshape(b, attn.heads * attn.dim_head, h, w))


@pytest.mark.parametrize("shape", [(1, 16, 64, 64), (3, 32, 17, 9), (2, 64, 8, 8)])
def test_head_by_head_attention_equals_the_one_shot_layer_bit_for_bit(shape):
    """The bounded-memory layer (k and v into each head's context first, never the full to_qkv output)
    returns exactly what IR-SDE's one-shot computation returns, in float32, with the same keys."""
    torch.manual_seed(1)
    attn = LinearAttention(shape[1])
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(attn(x), one_shot_linear_attention(attn, x))
    assert sorted(attn.state_dict()) == ["to_out.0.bias", "to_out.0.weight", "to_out.1.g", "to_qkv.weight"]


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return ConditionalUNet(nf=16, depth=3).eval()


def test_odd_sizes_reflect_pad_bottom_right_and_crop(small_net):
    torch.manual_seed(1)
    x, mu = torch.rand(2, 3, 37, 50), torch.rand(2, 3, 37, 50)
    with torch.no_grad():
        out = small_net(x, 30.0, mu=mu)
        # 37×50 → 40×56: the same net on the already-padded pair, cropped at the top-left
        padded = small_net(F.pad(x, (0, 6, 0, 3), mode="reflect"), 30.0, mu=F.pad(mu, (0, 6, 0, 3), mode="reflect"))
    assert out.shape == x.shape
    torch.testing.assert_close(out, padded[..., :37, :50], rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # smaller than the 8-pixel multiple in one dimension: padded in rounds
        assert small_net(torch.rand(1, 3, 3, 9), 1.0, mu=torch.rand(1, 3, 3, 9)).shape == (1, 3, 3, 9)
        assert small_net(torch.rand(1, 3, 1, 2), 1.0, mu=torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_scalar_time_equals_batch_time_and_samples_are_independent(small_net):
    torch.manual_seed(2)
    x, mu = torch.rand(3, 3, 16, 24), torch.rand(3, 3, 16, 24)
    with torch.no_grad():
        scalar = small_net(x, 42.5, mu=mu)
        batch = small_net(x, torch.full((3,), 42.5), mu=mu)
        zero_d = small_net(x, torch.tensor(42.5), mu=mu)
        mixed = small_net(x, torch.tensor([3.0, 42.5, 99.0]), mu=mu)
        second = small_net(x[1:2], 42.5, mu=mu[1:2])
        other_mu = small_net(x, 42.5, mu=mu.flip(0))
    torch.testing.assert_close(scalar, batch, rtol=0, atol=1e-6)
    torch.testing.assert_close(scalar, zero_d, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1:2], second, rtol=1e-5, atol=1e-6)
    assert (mixed[0] - scalar[0]).abs().max() > 1e-3  # the time is used
    assert (other_mu - scalar).abs().max() > 1e-3  # and so is μ


def test_forward_rejects_bad_inputs(small_net):
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="mu="):
        small_net(x, 1.0)
    with pytest.raises(ValueError, match=r"\(2,\) tensor"):
        small_net(x, torch.ones(3), mu=x)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        small_net(torch.rand(2, 1, 8, 8), 1.0, mu=x)
    with pytest.raises(ValueError, match="nf must be an even integer"):
        ConditionalUNet(nf=15)


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("layout", ["plain", "module_prefix", "state_dict", "params", "model", "safetensors"])
def test_checkpoint_round_trip(tmp_path, small_net, layout):
    state = small_net.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "module_prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif layout == "plain":
        torch.save(state, path)
    else:
        torch.save({layout: {f"module.{k}": v for k, v in state.items()}, "iter": 700000}, path)
    net = load_irsde_checkpoint(path)  # nf=16, depth=3 read from the shapes
    assert (net.nf, net.depth, net.training) == (16, 3, False)
    x, mu = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x, 10.0, mu=mu), small_net(x, 10.0, mu=mu), rtol=0, atol=0)
    assert load_irsde_checkpoint(path, nf=16, depth=3).nf == 16


def test_checkpoint_errors_name_the_keys(tmp_path, small_net):
    state = small_net.state_dict()
    broken = {k: v for k, v in state.items() if not k.startswith("mid_attn.")}
    broken["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as err:
        load_irsde_checkpoint(path)
    msg = str(err.value)
    assert "5 missing keys: mid_attn.fn.fn.to_qkv.weight, mid_attn.fn.fn.to_out.0.weight" in msg
    assert "mid_attn.fn.norm.g" in msg
    assert "1 unexpected key: extra.weight" in msg

    good = tmp_path / "good.pth"
    torch.save(state, good)
    with pytest.raises(ValueError) as err:  # wrong width: every key is there, with other shapes
        load_irsde_checkpoint(good, nf=32)
    msg = str(err.value)
    assert "shape mismatches (checkpoint vs model): init_conv.weight (16, 6, 7, 7) vs (32, 6, 7, 7)" in msg
    assert "missing" not in msg and "nf=32" in msg and "inpainting" in msg and "nf=16, depth=3" in msg
    with pytest.raises(ValueError, match=r"missing keys: .*downs\.3\.0\.mlp"):  # deeper than the checkpoint
        load_irsde_checkpoint(good, depth=4)

    torch.save({"state_dict": state, "model": state}, tmp_path / "two.pth")
    with pytest.raises(ValueError, match="several state dicts"):
        load_irsde_checkpoint(tmp_path / "two.pth")
    assert load_irsde_checkpoint(tmp_path / "two.pth", key="model").depth == 3
    torch.save({"weights": state}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="state_dict, params, model"):
        load_irsde_checkpoint(tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="not a file"):
        load_irsde_checkpoint(tmp_path / "absent.pth")


# ---------------------------------------------------------------- as a ScoreModel


def test_score_model_calls_the_net_at_the_irsde_index(small_net):
    sde = OFFICIAL_CONFIGS["deraining"].sde()
    assert sde.stationary_std == pytest.approx(10 / 255) and sde.steps == 100 and sde.eps == 0.005
    model = irsde_score_model(small_net, sde)
    assert isinstance(model, ScoreModel) and model.prediction == "noise"
    torch.manual_seed(3)
    x, mu = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    t = torch.tensor([0.37, 0.9])
    with torch.no_grad():
        pred = model(x, t, mu=mu)
        direct = small_net(x, torch.tensor([37.0, 90.0]), mu=mu)
    torch.testing.assert_close(pred.noise, direct, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="MRSDE"):
        irsde_score_model(small_net, S.VPSDE())


def test_official_configs():
    assert {k: (c.max_sigma, c.nf, c.depth) for k, c in OFFICIAL_CONFIGS.items()} == {
        "deraining": (10, 64, 4), "deblurring": (10, 64, 4), "sisr": (30, 64, 4),
        "inpainting": (30, 32, 4), "deshadow": (30, 32, 5)}
    assert all((c.T, c.schedule, c.eps) == (100, "cosine", 0.005) for c in OFFICIAL_CONFIGS.values())
    with torch.device("meta"):
        assert OFFICIAL_CONFIGS["inpainting"].network().init_conv.weight.shape == (32, 6, 7, 7)
