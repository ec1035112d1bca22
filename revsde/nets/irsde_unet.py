"""IR-SDE's conditional UNet (Luo et al., ICML 2023), module for module, so official checkpoints load.

The module tree (attribute names, ``nn.Sequential`` indices, bias flags, shapes) is that of
``codes/config/{deraining,deblurring,deshadow,inpainting,sisr}/models/modules/DenoisingUNet_arch.py``
in ``Algolzw/image-restoration-sde``, so ``load_state_dict(strict=True)`` accepts their ``.pth`` files.
The same class at small width (``nf=16, depth=3``) is the project's built-in restoration network.

Network contract: ``net(x, time, mu=mu) -> ε`` with ``x`` the state ``x_t``, ``mu`` the degraded image
(the MR SDE's mean) and ``time`` the raw IR-SDE index (0 … T, float, scalar or ``(B,)``) — exactly what
``revsde.ScoreModel`` passes with ``sde.model_time`` of an ``MRSDE``. The net sees ``cat([x − μ, μ])``.

That repository's denoising task is another model (``DenoisingSDE``, unconditional, softmax attention):
its checkpoint does not load here and has no ``OFFICIAL_CONFIGS`` entry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..model import ScoreModel
from ..sde.mr import MRSDE
from .checkpoints import first, mismatch
from .model_files import load_tensors, torch_load

WRAPPER_KEYS = ("state_dict", "params", "model")  # checked in this order, one level deep


# ---------------------------------------------------------------- building blocks


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels with a gain ``g`` of shape ``(1, C, 1, 1)`` and no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3  # the official value per dtype
        centred = x - x.mean(dim=1, keepdim=True)  # two passes: torch.var_mean over dim 1 is ~10x slower on CPU
        var = (centred * centred).mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(var + eps) * self.g


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn, self.norm = fn, ChannelLayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


class LinearAttention(nn.Module):
    """Linear attention (softmax of q over its features, of k over positions), ``to_out`` = 1×1 conv + norm.
    Head by head: each head's k, v (that head's rows of the ``to_qkv`` weight) into its small context, then
    its q, so the full-resolution ``to_qkv`` output never exists; bit-identical to the one-shot layer."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head**-0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x):
        b, _, h, w = x.shape
        n, d, hidden = h * w, self.dim_head, self.heads * self.dim_head
        weight = self.to_qkv.weight
        out = x.new_empty(b, self.heads, d, n)
        for head in range(self.heads):
            def part(which: int) -> torch.Tensor:  # 0: q, 1: k, 2: v of this head, (b, d, n)
                return F.conv2d(x, weight[which * hidden + head * d: which * hidden + (head + 1) * d]).reshape(b, d, n)

            context = part(1).softmax(dim=-1) @ (part(2) / n).transpose(-1, -2)  # (b, d, e): Σ_n k_dn v_en
            q = part(0).softmax(dim=-2) * self.scale
            out[:, head] = context.transpose(-1, -2) @ q  # (b, e, n): Σ_d context_de q_dn
        return self.to_out(out.reshape(b, hidden, h, w))


def conv_nobias(dim_in: int, dim_out: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(dim_in, dim_out, kernel, padding=kernel // 2, bias=False)


class Block(nn.Module):
    """3×3 conv (no bias), optional FiLM ``x·(scale + 1) + shift``, SiLU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = conv_nobias(dim_in, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.proj(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResBlock(nn.Module):
    """Two Blocks, the first modulated by the time embedding; a 1×1 conv skip when channels change."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * dim_out))
        self.block1 = Block(dim_in, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = conv_nobias(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x, t_emb):
        scale_shift = self.mlp(t_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


class SinusoidalPosEmb(nn.Module):
    """``[sin(t ω_k), cos(t ω_k)]``, ``ω_k = 10000^(−k/(half − 1))``: ω in float32, the product in
    the promoted dtype of ``t`` and float32 (as the official code does)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
        arg = t[:, None] * freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


def upsample(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_in, dim_out, 3, padding=1))


def attention(dim: int, heads: int, dim_head: int) -> Residual:
    return Residual(PreNorm(dim, LinearAttention(dim, heads, dim_head)))


def reflect_pad(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Reflect-pad the bottom and right edges; a pad wider than the image is applied in rounds
    (replicate for a 1-pixel edge), so tiny inputs work where a single reflect would be illegal."""
    while pad_h > 0 or pad_w > 0:
        h, w = x.shape[-2:]
        ph, pw = min(pad_h, h - 1), min(pad_w, w - 1)
        if ph == 0 and pw == 0:  # a 1-pixel side cannot reflect
            return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        pad_h, pad_w = pad_h - ph, pad_w - pw
    return x


# ---------------------------------------------------------------- the network


class ConditionalUNet(nn.Module):
    """IR-SDE's UNet: ``forward(x, time, mu) -> ε``.

    ``in_nc`` is the image's channel count (the first conv sees ``2·in_nc``: ``x − μ`` and ``μ``);
    level ``i`` of ``depth`` works at ``nf·2^i`` channels, the middle at ``nf·2^depth``. H and W are
    reflect-padded to a multiple of ``2^depth`` and the output cropped back. ``attn_heads`` and
    ``attn_dim_head`` are 4 and 32 in every official checkpoint; smaller values only suit new nets.
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, depth: int = 4, *,
                 attn_heads: int = 4, attn_dim_head: int = 32):
        super().__init__()
        for name, value, least in (("in_nc", in_nc, 1), ("out_nc", out_nc, 1), ("depth", depth, 1),
                                   ("attn_heads", attn_heads, 1), ("attn_dim_head", attn_dim_head, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"ConditionalUNet {name} must be an integer >= {least} (got {value!r})")
        if isinstance(nf, bool) or not isinstance(nf, int) or nf < 4 or nf % 2:
            raise ValueError(f"ConditionalUNet nf must be an even integer >= 4 (the time embedding has nf/2 "
                             f"frequencies) (got {nf!r})")
        self.in_nc, self.out_nc, self.nf, self.depth = in_nc, out_nc, nf, depth
        time_dim = 4 * nf

        self.init_conv = conv_nobias(2 * in_nc, nf, 7)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(nf), nn.Linear(nf, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))

        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        for i in range(depth):
            dim_in, dim_out = nf * 2**i, nf * 2 ** (i + 1)
            last = i == depth - 1
            self.downs.append(nn.ModuleList([
                ResBlock(dim_in, dim_in, time_dim),
                ResBlock(dim_in, dim_in, time_dim),
                attention(dim_in, attn_heads, attn_dim_head),
                conv_nobias(dim_in, dim_out) if last else nn.Conv2d(dim_in, dim_out, 4, stride=2, padding=1),
            ]))
            self.ups.insert(0, nn.ModuleList([  # ups[0] is the deepest level
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                attention(dim_out, attn_heads, attn_dim_head),
                conv_nobias(dim_out, dim_in) if i == 0 else upsample(dim_out, dim_in),
            ]))

        mid = nf * 2**depth
        self.mid_block1 = ResBlock(mid, mid, time_dim)
        self.mid_attn = attention(mid, attn_heads, attn_dim_head)
        self.mid_block2 = ResBlock(mid, mid, time_dim)

        self.final_res_block = ResBlock(2 * nf, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_nc, 3, padding=1)

    def embed_time(self, time, batch: int, device: torch.device) -> torch.Tensor:
        """The ``(B, 4·nf)`` time embedding of a scalar or ``(B,)`` raw index."""
        t = torch.as_tensor(time, device=device)
        if t.ndim == 0:
            t = t.reshape(1)
        if t.ndim != 1 or t.shape[0] not in (1, batch):
            raise ValueError(f"time must be a scalar or a ({batch},) tensor for a batch of {batch} "
                             f"(got shape {tuple(t.shape)})")
        emb = self.time_mlp[0](t.expand(batch)).to(self.time_mlp[1].weight.dtype)
        for layer in list(self.time_mlp)[1:]:
            emb = layer(emb)
        return emb

    def forward(self, x: torch.Tensor, time, mu: torch.Tensor | None = None) -> torch.Tensor:
        if mu is None:
            raise ValueError("ConditionalUNet is conditioned on the degraded image: call net(x, time, mu=mu)")
        if x.ndim != 4 or x.shape[1] != self.in_nc:
            raise ValueError(f"ConditionalUNet(in_nc={self.in_nc}) takes x of shape (B, {self.in_nc}, H, W) "
                             f"(got {tuple(x.shape)})")
        mu = mu.to(x.dtype).expand_as(x)
        height, width = x.shape[-2:]
        s = 2**self.depth
        h = reflect_pad(torch.cat([x - mu, mu], dim=1), -height % s, -width % s)
        t = self.embed_time(time, x.shape[0], x.device)

        h = self.init_conv(h)
        h_init = h
        skips = []
        for block1, block2, attn, down in self.downs:
            h = block1(h, t)
            skips.append(h)
            h = attn(block2(h, t))
            skips.append(h)
            h = down(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, t)), t)

        for block1, block2, attn, up in self.ups:
            h = block1(torch.cat([h, skips.pop()], dim=1), t)
            h = attn(block2(torch.cat([h, skips.pop()], dim=1), t))
            h = up(h)

        h = self.final_res_block(torch.cat([h, h_init], dim=1), t)
        return self.final_conv(h)[..., :height, :width]


# ---------------------------------------------------------------- official settings


@dataclass(frozen=True)
class IRSDETask:
    """One official IR-SDE task: its yml ``sde:`` block and ``network_G.setting``."""

    task: str
    max_sigma: float
    nf: int
    depth: int
    T: int = 100
    schedule: str = "cosine"
    eps: float = 0.005
    note: str = ""

    def sde(self, **kwargs) -> MRSDE:
        """The task's MR SDE as IR-SDE trained and samples it: its own θ̄ (``convention="irsde"``: θ_0
        subtracted, σ = 0 at index 0, so ``t_min`` is index 1 unless given) read between indices as the
        official code does (``interpolation="linear"``). ``kwargs`` go to ``MRSDE``."""
        kwargs = {"convention": "irsde", "interpolation": "linear", **kwargs}
        return MRSDE.from_irsde_config(self.max_sigma, self.T, self.schedule, self.eps, **kwargs)

    def network(self, **kwargs) -> ConditionalUNet:
        return ConditionalUNet(nf=self.nf, depth=self.depth, **kwargs)


# Read from the test ymls of image-restoration-sde @2598d73 (codes/config/<task>/options/test/ir-sde.yml).
OFFICIAL_CONFIGS = {
    "deraining": IRSDETask("deraining", max_sigma=10, nf=64, depth=4),
    "deblurring": IRSDETask("deblurring", max_sigma=10, nf=64, depth=4),
    "sisr": IRSDETask("sisr", max_sigma=30, nf=64, depth=4,
                      note="LQ upsampled to the HR size before the net (nearest); issue #7: max_sigma 30"),
    "inpainting": IRSDETask("inpainting", max_sigma=30, nf=32, depth=4,
                            note="the yml says nf 64; the released weights need nf 32 (issues #7, #114)"),
    "deshadow": IRSDETask("deshadow", max_sigma=30, nf=32, depth=5,
                          note="test yml; the train yml says max_sigma 10, nf 64, depth 4"),
}


# ---------------------------------------------------------------- checkpoints


def _read_file(path: Path, map_location) -> dict:
    """The file's content: tensors only (``.safetensors``, or ``torch.load(weights_only=True)``)."""
    if path.suffix == ".safetensors":
        return load_tensors(path, map_location, what="IR-SDE checkpoint")
    return torch_load(path, map_location, what="IR-SDE checkpoint")


def _unwrap(obj, path: Path, key: str | None) -> dict:
    """The tensor dict inside a checkpoint: itself, or the value under ``key`` / one of ``WRAPPER_KEYS``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise ValueError(f"{path}: no key {key!r} at the top level (keys: {sorted(map(str, obj))[:10]})")
        obj = obj[key]
    elif not all(torch.is_tensor(v) for v in obj.values()):
        found = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if len(found) > 1:
            raise ValueError(f"{path}: several state dicts ({', '.join(found)}); choose one with key=")
        if not found:
            raise ValueError(f"{path}: neither a state dict nor a dict with one of {', '.join(WRAPPER_KEYS)} "
                             f"(top-level keys: {sorted(map(str, obj))[:10]})")
        obj = obj[found[0]]
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:10]}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _levels(state: dict) -> int:
    """The number of ``downs.{i}`` levels in a state dict: the net's depth."""
    return len({k.split(".")[1] for k in state if k.startswith("downs.")})


def check_state_dict(net: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Raise a ValueError naming the missing, unexpected and mis-shaped keys of ``state`` for ``net``."""
    problems = mismatch(net.state_dict(), state)
    if not problems:
        return
    lines = [f"{source} does not match {type(net).__name__}"
             f"(nf={getattr(net, 'nf', '?')}, depth={getattr(net, 'depth', '?')}, in_nc={getattr(net, 'in_nc', '?')}):"]
    lines += problems
    if "init_conv.weight" in state:
        w = state["init_conv.weight"]
        lines.append(f"  the checkpoint looks like nf={w.shape[0]}, depth={_levels(state)}, in_nc={w.shape[1] // 2}; "
                     f"note the official inpainting weights use nf=32 and deshadow nf=32, depth=5")
    raise ValueError("\n".join(lines))


def load_irsde_checkpoint(path, *, nf: int | None = None, depth: int | None = None, in_nc: int = 3,
                          out_nc: int = 3, map_location="cpu", key: str | None = None) -> ConditionalUNet:
    """A ``ConditionalUNet`` with an official IR-SDE checkpoint (``.pth`` or ``.safetensors``) loaded strictly.

    ``nf`` / ``depth`` default to what the checkpoint's shapes say (``init_conv.weight`` and the number of
    ``downs`` levels); given explicitly they are checked. A dict wrapping the tensors under one of
    ``"state_dict"``, ``"params"``, ``"model"`` (or under ``key``) is unwrapped, and a leading ``module.``
    (DataParallel) is stripped from every key. Returns the net in eval mode on ``map_location``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IR-SDE checkpoint {str(path)!r} is not a file")
    state = _unwrap(_read_file(path, map_location), path, key)
    if nf is None:
        init = state.get("init_conv.weight")
        if init is None:
            raise ValueError(f"{path} is not an IR-SDE ConditionalUNet checkpoint: it has no init_conv.weight "
                             f"(its tensors: {first(list(state))})")
        nf = int(init.shape[0])
    if depth is None:
        depth = _levels(state)
        if depth == 0:
            raise ValueError(f"{path} is not an IR-SDE ConditionalUNet checkpoint: it has no downs.* levels "
                             f"(its tensors: {first(list(state))})")
    net = ConditionalUNet(in_nc, out_nc, nf, depth)
    check_state_dict(net, state, source=str(path))
    net.load_state_dict(state, strict=True)
    return net.to(map_location).eval()


def irsde_score_model(net: nn.Module, sde: MRSDE) -> ScoreModel:
    """``net`` as a noise-predicting ``revsde.ScoreModel`` on ``sde``.

    ScoreModel calls ``net(x, sde.model_time(t), mu=mu)``; ``MRSDE.model_time`` is the raw IR-SDE index,
    which is what the official nets were trained on, so the call maps one to one onto
    ``ConditionalUNet.forward``. The official loss (§3.4 of the MR reference) makes the output ε within
    about 2.5 % near ``t = T``.
    """
    if not isinstance(sde, MRSDE):
        raise ValueError(f"IR-SDE networks take the raw IR-SDE index as time: sde must be an MRSDE "
                         f"(got {type(sde).__name__})")
    return ScoreModel(net, sde, prediction="noise")
