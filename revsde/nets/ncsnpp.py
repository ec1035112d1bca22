"""SGMSE+'s NCSN++ backbone (Song et al. 2021, as adapted by Richter et al. 2023), module for module.

Parameter names, shapes and registration order are those of ``sgmse/backbones/ncsnpp.py`` in sp-uhh/sgmse
(``output_layer`` first, then ``all_modules.0`` … ``all_modules.76``; 647 tensors, 65,590,822 parameters at
the default configuration), so the official state dicts load strictly and the official EMA list, which is
positional in ``parameters()`` order, maps one to one. ``BACKBONES`` holds the three official variants.

Contract: ``net(x, y, t)`` with ``x`` the state and ``y`` the noisy spectrogram, both complex ``[B, 1, F, T]``,
and ``t`` the diffusion time (scalar or ``(B,)``); it returns the raw network output, complex ``[B, 1, F, T]``.
The net sees the real channels ``[x.re, x.im, y.re, y.im]`` and ``log t`` through Gaussian Fourier features.
F and T must be multiples of ``2^(len(ch_mult) − 1)`` (64 for the official nets). How the output becomes a
score is SGMSE's ScoreModel's business: ``revsde.nets.sgmse.SGMSEScore``.

Attention fires at level ``i`` when ``image_size / 2^i`` is in ``attn_resolutions``. The official forward
decides from the runtime frequency size instead (``h.shape[-2]``); the two agree when F = ``image_size``
(256 bins, the only size the official 16 kHz nets are run at).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)
IN_CHANNELS = 4  # x.re, x.im, y.re, y.im
PROGRESSIVE = ("none", "output_skip")
PROGRESSIVE_INPUT = ("none", "input_skip")
COMBINE = ("sum", "cat")
TIME_SCALING = ("before_output_layer", "after_output_layer", "none")


# ---------------------------------------------------------------- FIR resampling (StyleGAN2's upfirdn2d)


def _fir_kernel(taps, like: torch.Tensor) -> torch.Tensor:
    """The separable 2-D filter ``outer(k, k) / sum(k)²`` in ``like``'s dtype and device."""
    k = torch.as_tensor(taps, dtype=torch.float64)
    return (torch.outer(k, k) / k.sum() ** 2).to(dtype=like.dtype, device=like.device)


def _depthwise(k: torch.Tensor, channels: int) -> torch.Tensor:
    return k[None, None].expand(channels, 1, *k.shape)


def upsample2x(x: torch.Tensor, taps=None) -> torch.Tensor:
    """Double H and W: StyleGAN2's ``upsample_2d`` (zero-stuff, FIR filter with gain 4) or, with no
    ``taps``, nearest neighbour. The FIR form is one depthwise transposed convolution."""
    b, c, h, w = x.shape
    if taps is None:
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)
    k = 4 * _fir_kernel(taps, x)
    n = k.shape[0]
    crop = n - 2 - (n - 1) // 2  # upfirdn2d pads (n − 1)//2 + 1 before; the transposed conv trims this
    out = F.conv_transpose2d(x, _depthwise(k, c), stride=2, padding=crop, groups=c)
    return out[..., : 2 * h, : 2 * w]


def downsample2x(x: torch.Tensor, taps=None) -> torch.Tensor:
    """Halve H and W: StyleGAN2's ``downsample_2d`` (FIR filter, keep every other sample) or, with no
    ``taps``, the mean of each 2×2 block. The FIR form is one strided depthwise convolution."""
    b, c, h, w = x.shape
    if taps is None:
        return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))
    k = _depthwise(_fir_kernel(taps, x).flip(0, 1), c)
    p = k.shape[-1] - 2
    lo, hi = (p + 1) // 2, p // 2
    if lo == hi:
        return F.conv2d(x, k, stride=2, padding=lo, groups=c)
    return F.conv2d(F.pad(x, (lo, hi, lo, hi)), k, stride=2, groups=c)


# ---------------------------------------------------------------- layers (official attribute names)


def ddpm_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM's default init: uniform, variance ``scale / fan_avg`` (scale 0 means 1e-10, as officially)."""
    scale = 1e-10 if scale == 0 else scale
    fan_avg = (weight.shape[0] + weight.shape[1]) * math.prod(weight.shape[2:]) / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv(in_ch: int, out_ch: int, kernel: int, init_scale: float = 1.0) -> nn.Conv2d:
    layer = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    ddpm_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    ddpm_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


class GaussianFourierProjection(nn.Module):
    """``[sin 2πWs, cos 2πWs]`` with fixed ``W ~ N(0, scale²)`` (a parameter without grad, in the state dict)."""

    def __init__(self, size: int, scale: float):
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        proj = s[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class NIN(nn.Module):
    """A per-pixel linear map with ``W`` stored ``[in, out]``."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(ddpm_init_(torch.empty(in_dim, out_dim), init_scale))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all F·T positions, scale ``C^-1/2``, residual."""

    def __init__(self, channels: int, *, skip_rescale: bool, init_scale: float):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0, self.NIN_1, self.NIN_2 = NIN(channels, channels), NIN(channels, channels), NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.GroupNorm_0(x)
        q, k, v = (nin(normed).reshape(b, 1, c, h * w).transpose(-1, -2)
                   for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        out = x + self.NIN_3(out)
        return out / SQRT2 if self.skip_rescale else out


class ResnetBlockBigGANpp(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between; ``resample`` "up"/"down" resamples
    both paths (FIR with ``taps``, else nearest / box) and forces the 1×1 shortcut ``Conv_2``."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int, resample: str | None = None,
                 taps=None, dropout: float, skip_rescale: bool, init_scale: float):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv(in_ch, out_ch, 3)
        self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv(out_ch, out_ch, 3, init_scale)
        self.Conv_2 = conv(in_ch, out_ch, 1) if in_ch != out_ch or resample else None
        self.resample = {"up": upsample2x, "down": downsample2x, None: None}[resample]
        self.taps, self.skip_rescale = taps, skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.GroupNorm_0(x))
        if self.resample is not None:
            h, x = self.resample(h, self.taps), self.resample(x, self.taps)
        h = self.Conv_0(h) + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return (x + h) / SQRT2 if self.skip_rescale else x + h


class Combine(nn.Module):
    """Input skip: a 1×1 conv of the input pyramid, summed with (or concatenated to) the features."""

    def __init__(self, in_ch: int, out_ch: int, method: str):
        super().__init__()
        self.Conv_0 = conv(in_ch, out_ch, 1)
        self.method = method

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        skip = self.Conv_0(pyramid)
        return skip + h if self.method == "sum" else torch.cat([skip, h], dim=1)


# ---------------------------------------------------------------- the network


@dataclass
class _Level:
    """One resolution of the U-Net, as indices into ``all_modules``."""

    blocks: list[int] = field(default_factory=list)
    attns: list[int | None] = field(default_factory=list)  # down: after each block; up: once after the blocks
    resample: int | None = None                       # the down / up ResnetBlock
    combine: int | None = None                        # down: input-skip combiner
    head: tuple[int, int] | None = None               # up: output-skip GroupNorm and conv


def _choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"NCSNpp {name} must be one of {', '.join(map(repr, options))} (got {value!r})")
    return value


class NCSNpp(nn.Module):
    """NCSN++ with BigGAN resblocks; ``forward(x, y, t)`` → complex ``[B, 1, F, T]`` (module docstring).

    ``time_scaling`` says where the output is divided by ``t``: "before_output_layer" (``ncsnpp``),
    "after_output_layer" (``ncsnpp_48k``) or "none" (``ncsnpp_v2``). ``centered=False`` maps the input
    channels to ``2·v − 1`` first. ``fir_kernel=None`` resamples by nearest neighbour / 2×2 mean.
    """

    def __init__(self, *, nf: int = 128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions=(16,), image_size: int = 256, fir_kernel=(1, 3, 3, 1), skip_rescale: bool = True,
                 progressive: str = "output_skip", progressive_input: str = "input_skip",
                 progressive_combine: str = "sum", fourier_scale: float = 16.0, dropout: float = 0.0,
                 init_scale: float = 0.0, centered: bool = True, time_scaling: str = "before_output_layer"):
        super().__init__()
        self.progressive = _choice("progressive", progressive, PROGRESSIVE)
        self.progressive_input = _choice("progressive_input", progressive_input, PROGRESSIVE_INPUT)
        _choice("progressive_combine", progressive_combine, COMBINE)
        self.time_scaling = _choice("time_scaling", time_scaling, TIME_SCALING)
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        if not ch_mult or num_res_blocks < 1:
            raise ValueError(f"NCSNpp needs at least one level and one block (ch_mult={ch_mult}, "
                             f"num_res_blocks={num_res_blocks})")
        for width in sorted({nf * m for m in ch_mult}):
            if width < 4 or width % min(width // 4, 32):
                raise ValueError(f"NCSNpp width nf·mult = {width} does not split into min(C//4, 32) GroupNorm "
                                 f"groups (nf={nf}, ch_mult={ch_mult})")
        if fir_kernel is not None and len(fir_kernel) < 2:
            raise ValueError(f"NCSNpp fir_kernel needs at least 2 taps (got {fir_kernel!r})")
        self.nf, self.ch_mult, self.num_res_blocks = nf, ch_mult, num_res_blocks
        self.attn_resolutions, self.image_size, self.centered = attn_resolutions, image_size, centered
        self.taps = None if fir_kernel is None else tuple(float(k) for k in fir_kernel)

        self.output_layer = nn.Conv2d(IN_CHANNELS, 2, 1)  # registered first, as officially

        block = partial(ResnetBlockBigGANpp, temb_dim=4 * nf, taps=self.taps, dropout=dropout,
                        skip_rescale=skip_rescale, init_scale=init_scale)
        attn = partial(AttnBlockpp, skip_rescale=skip_rescale, init_scale=init_scale)
        modules = [GaussianFourierProjection(nf, fourier_scale), dense(2 * nf, 4 * nf), dense(4 * nf, 4 * nf),
                   conv(IN_CHANNELS, nf, 3)]

        def add(module: nn.Module) -> int:
            modules.append(module)
            return len(modules) - 1

        levels = len(ch_mult)
        has_attn = [image_size // 2**i in attn_resolutions for i in range(levels)]
        self._down, self._up = [], []
        skip_ch, in_ch = [nf], nf
        for i, mult in enumerate(ch_mult):
            level = _Level()
            for _ in range(num_res_blocks):
                level.blocks.append(add(block(in_ch, nf * mult)))
                in_ch = nf * mult
                level.attns.append(add(attn(in_ch)) if has_attn[i] else None)
                skip_ch.append(in_ch)
            if i != levels - 1:
                level.resample = add(block(in_ch, resample="down"))
                if progressive_input == "input_skip":
                    level.combine = add(Combine(IN_CHANNELS, in_ch, progressive_combine))
                    in_ch *= 2 if progressive_combine == "cat" else 1
                skip_ch.append(in_ch)
            self._down.append(level)

        self._mid = (add(block(in_ch)), add(attn(in_ch)), add(block(in_ch)))

        for i in reversed(range(levels)):
            level = _Level()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(add(block(in_ch + skip_ch.pop(), nf * ch_mult[i])))
                in_ch = nf * ch_mult[i]
            level.attns.append(add(attn(in_ch)) if has_attn[i] else None)
            if progressive == "output_skip":
                level.head = (add(group_norm(in_ch)), add(conv(in_ch, IN_CHANNELS, 3, init_scale)))
            if i != 0:
                level.resample = add(block(in_ch, resample="up"))
            self._up.append(level)
        self._final = None if progressive == "output_skip" else (add(group_norm(in_ch)),
                                                                 add(conv(in_ch, IN_CHANNELS, 3, init_scale)))
        self.all_modules = nn.ModuleList(modules)

    def _time(self, t, batch: int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or a ({batch},) tensor for a batch of {batch} "
                             f"(got shape {tuple(t.shape)})")
        return t

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not (x.is_complex() and x.ndim == 4 and x.shape[1] == 1):
            raise ValueError(f"NCSNpp takes complex x of shape [B, 1, F, T] (got {x.dtype} {tuple(x.shape)})")
        if not y.is_complex() or y.shape != x.shape:
            raise ValueError(f"NCSNpp takes complex y shaped like x {tuple(x.shape)} (got {y.dtype} {tuple(y.shape)})")
        step = 2 ** (len(self.ch_mult) - 1)
        if x.shape[-2] % step or x.shape[-1] % step:
            raise ValueError(f"NCSNpp with {len(self.ch_mult)} levels needs F and T divisible by {step} "
                             f"(got F={x.shape[-2]}, T={x.shape[-1]}); pad the spectrogram")

    def forward(self, x: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
        self._check_inputs(x, y)
        m = self.all_modules
        y = y.to(x.dtype)
        inputs = torch.cat([x.real, x.imag, y.real, y.imag], dim=1)
        t = self._time(t, x.shape[0], inputs)
        temb = m[2](F.silu(m[1](m[0](torch.log(t)))))
        if not self.centered:
            inputs = 2 * inputs - 1

        pyramid = inputs
        hs = [m[3](inputs)]
        for level in self._down:
            for b, a in zip(level.blocks, level.attns):
                h = m[b](hs[-1], temb)
                hs.append(h if a is None else m[a](h))
            if level.resample is not None:
                h = m[level.resample](hs[-1], temb)
                if level.combine is not None:
                    pyramid = downsample2x(pyramid, self.taps)
                    h = m[level.combine](pyramid, h)
                hs.append(h)

        first, middle_attn, last = self._mid
        h = m[last](m[middle_attn](m[first](hs[-1], temb)), temb)

        out = None
        for level in self._up:
            for b in level.blocks:
                h = m[b](torch.cat([h, hs.pop()], dim=1), temb)
            if level.attns[0] is not None:
                h = m[level.attns[0]](h)
            if level.head is not None:  # output skip: the pyramid collects a 4-channel image per level
                norm, head = level.head
                skip = m[head](F.silu(m[norm](h)))
                out = skip if out is None else upsample2x(out, self.taps) + skip
            if level.resample is not None:
                h = m[level.resample](h, temb)
        if self._final is not None:
            norm, head = self._final
            out = m[head](F.silu(m[norm](h)))

        if self.time_scaling == "before_output_layer":
            out = out / t[:, None, None, None]
        out = self.output_layer(out)
        if self.time_scaling == "after_output_layer":
            out = out / t[:, None, None, None]
        return torch.complex(out[:, 0], out[:, 1]).unsqueeze(1)


# The official backbones' constructor settings (sgmse/backbones/{ncsnpp,ncsnpp_48k,ncsnpp_v2}.py defaults).
BACKBONES = {
    "ncsnpp": {},
    "ncsnpp_48k": {"attn_resolutions": (), "progressive": "none", "progressive_input": "none",
                   "time_scaling": "after_output_layer"},
    "ncsnpp_v2": {"time_scaling": "none"},  # no `centered` flag: the input is used as is
}


def ncsnpp_backbone(name: str = "ncsnpp", **overrides) -> NCSNpp:
    """The official backbone ``name`` (a key of ``BACKBONES``), with constructor ``overrides``."""
    if name not in BACKBONES:
        raise ValueError(f"NCSN++ backbone must be one of {', '.join(BACKBONES)} (got {name!r})")
    if name == "ncsnpp_v2" and overrides.get("centered", True) is not True:
        raise ValueError("ncsnpp_v2 has no `centered` option: its input is never mapped to 2x − 1")
    return NCSNpp(**{**BACKBONES[name], **overrides})
