"""Counter-based normals: Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3")
in integer tensor operations, then Box–Muller.

A counter-based generator is a pure function of a key and a counter, so every sample of a batch draws from
its own stream in one vectorised call: sample ``b`` of a run seeded ``s`` has key ``s + b``, and its noise at
draw ``d`` is a function of ``(s + b, d, element index)`` only. It does not depend on the batch the sample is
drawn in, nor on the device (the words are integers; the normals are computed in float64 and rounded to the
state's dtype), and a draw holds no host state when its index is a device tensor, so it can be captured in a
CUDA graph.

Words are 32-bit unsigned integers held in int64 tensors. The product of two words needs 64 unsigned
bits; int64 multiplication wraps modulo 2⁶⁴ on every device torch runs on, so its low 64 bits are exact,
and the high word is recovered with an arithmetic shift and a mask.
"""
from __future__ import annotations

import math

import torch

MASK = 0xFFFFFFFF
#: Philox4x32's multipliers and Weyl key increments (Random123)
MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
WEYL = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
#: the last counter word: what a draw is for, so that streams of one key never overlap
PURPOSES = {"normal": 0, "brownian": 1}
#: normals the CPU computes per block of cached draws (amortises the per-operation cost of small draws)
CACHE_NORMALS = 1 << 15
CACHE_DRAWS = 64


def _word(value, device) -> torch.Tensor:
    """An int64 tensor on ``device``; a Python integer by a fill, never a host-to-device copy, so that a draw
    can be captured in a CUDA graph."""
    if torch.is_tensor(value):
        return value.to(device=device, dtype=torch.int64)
    return torch.full((), int(value), dtype=torch.int64, device=device)


def _lanes(values, device) -> torch.Tensor:
    return torch.stack([_word(v, device) for v in values])


def round_keys(k0, k1, rounds: int = ROUNDS) -> torch.Tensor:
    """Philox's key schedule ``(k0 + r W0, k1 + r W1)`` for rounds ``r = 0 … rounds − 1``: ``(rounds, 2, *shape)``.
    Left unreduced mod 2³² (below 2³⁶): the rounds mask what they xor it into."""
    k0, k1 = torch.broadcast_tensors(torch.as_tensor(k0, dtype=torch.int64), torch.as_tensor(k1, dtype=torch.int64))
    steps = torch.arange(rounds, dtype=torch.int64, device=k0.device)
    return torch.stack([k0, k1]) + (steps[:, None] * _lanes(WEYL, k0.device)).reshape(rounds, 2, *([1] * k0.ndim))


def philox_lanes(counter, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Philox4x32 on counter words ``(c0, c1, c2, c3)`` (int64 tensors or ints in ``[0, 2³²)``) under the key
    schedule ``keys`` (``round_keys``): the output words as two lanes stacked on a new first axis,
    ``((w0, w2), (w3, w1))``. Counter and key shapes broadcast together."""
    device = keys.device
    c0, c1, c2, c3 = (_word(c, device) for c in counter)
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)
    mult = _lanes(MULTIPLIERS, device).reshape(2, *([1] * len(shape)))
    # (c0, c2) and (c3, c1) as two lanes: one multiply, shift and mask per round serve both
    mul = torch.stack([c0.expand(shape), c2.expand(shape)])
    odd = torch.stack([c3.expand(shape), c1.expand(shape)])
    for key in keys:
        product = mul * mult  # wraps mod 2^64: the low 64 bits of the 32 x 32-bit products
        # (hi0 ^ c3, hi1 ^ c1) flipped is (hi1 ^ c1, hi0 ^ c3), the new (c0, c2); the low words, the new (c3, c1),
        # are kept with the high ones above them: the mask here clears what they bring in
        mul = ((product >> 32).bitwise_xor_(odd).flip(0) ^ key).bitwise_and_(MASK)
        odd = product
    return mul, odd & MASK


def philox4x32(counter, key, rounds: int = ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` (Random123's ``philox4x32_R``): the four output words for counter words
    ``(c0, c1, c2, c3)`` and key words ``(k0, k1)``, each an int or int64 tensor in ``[0, 2³²)``."""
    (w0, w2), (w3, w1) = philox_lanes(counter, round_keys(*key, rounds=rounds))
    return w0, w1, w2, w3


def split_words(value) -> tuple:
    """A 64-bit integer (int or int64 tensor, two's complement) as its (low, high) 32-bit words."""
    if torch.is_tensor(value):
        return value & MASK, (value >> 32) & MASK
    value = int(value) % 2**64
    return value & MASK, value >> 32


def key_schedule(keys: torch.Tensor) -> torch.Tensor:
    """The round keys of per-sample 64-bit keys ``(B,)``, shaped to broadcast against ``(B, rows, pairs)``."""
    k_lo, k_hi = split_words(keys.reshape(-1, 1, 1))
    return round_keys(k_lo, k_hi)


def box_muller(radius_words: torch.Tensor, angle_words: torch.Tensor) -> torch.Tensor:
    """Two float64 standard normals ``(r cos θ, r sin θ)`` (a new last axis) per pair of 32-bit words:
    ``u = (w + 1/2) 2⁻³²`` in (0, 1), ``r = sqrt(−2 log u₁)``, ``θ = 2π u₂``."""
    # -2 log u = 64 log 2 - 2 log(w + 1/2)
    radius = torch.log(radius_words.to(torch.float64).add_(0.5)).mul_(-2.0).add_(64 * math.log(2)).sqrt_()
    angle = angle_words.to(torch.float64).add_(0.5).mul_(2 * math.pi / 2**32)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1).mul_(radius[..., None])


def block_normals(keys: torch.Tensor, row, count: int, *, rows: int = 1, purpose: str = "normal",
                  schedule: torch.Tensor | None = None) -> torch.Tensor:
    """``(2, B, R, count)`` float64 standard normals of the counter rows ``row … row + rows − 1`` of each
    sample's key (``keys``: ``(B,)`` int64; ``row``: an int, or an int64 tensor ``()``, ``(B,)`` or ``(B, R₀)``
    for several rows per sample, read on no host; ``R = R₀ · rows``). Counter ``(q, row, ·, purpose)`` gives
    elements ``2q, 2q + 1`` twice: from words (w0, w3) in lane 0 and from (w2, w1) in lane 1.
    ``schedule``: ``key_schedule(keys)``, if kept."""
    device = keys.device
    batch, pairs = keys.shape[0], (count + 1) // 2
    schedule = key_schedule(keys) if schedule is None else schedule
    index = _word(row, device)
    index = index.reshape(-1, 1) if index.ndim < 2 else index
    index = (index[:, :, None] + torch.arange(rows, dtype=torch.int64, device=device)).reshape(index.shape[0], -1, 1)
    r_lo, r_hi = split_words(index)
    q = torch.arange(pairs, dtype=torch.int64, device=device)
    radius, angle = philox_lanes((q, r_lo, r_hi, PURPOSES[purpose]), schedule)  # ((w0, w2), (w3, w1))
    z = box_muller(radius, angle)  # (lane, B, row, pair, cos/sin)
    return z.reshape(2, batch, -1, 2 * pairs)[..., :count]


def normals(keys: torch.Tensor, draw, count: int, *, draws: int = 1, schedule: torch.Tensor | None = None,
            ) -> torch.Tensor:
    """``(B, draws, count)`` float64 standard normals: draws ``draw … draw + draws − 1`` of each sample's
    Philox stream (``keys``: ``(B,)`` int64, the run's seed + b). Draw ``d`` is lane ``d mod 2`` of counter
    row ``d // 2`` (``block_normals``): two consecutive draws share their blocks, so no word is wasted
    whatever the number of elements. ``draw``: an int, or an int64 tensor (one draw; nothing is read on the
    host, so the draw can be captured in a CUDA graph)."""
    if torch.is_tensor(draw):
        if draws != 1:
            raise ValueError("a draw index held in a tensor draws one draw at a time")
        z = block_normals(keys, draw >> 1, count, schedule=schedule)
        return z.index_select(0, (draw & 1).reshape(1))[0]
    first = int(draw) // 2
    rows = (int(draw) + draws - 1) // 2 - first + 1
    z = block_normals(keys, first, count, rows=rows, schedule=schedule)
    offset = int(draw) - 2 * first
    return z.permute(1, 2, 0, 3).reshape(keys.shape[0], 2 * rows, -1)[:, offset:offset + draws]


def as_keys(values, device=None) -> torch.Tensor:
    """Python integers as 64-bit Philox keys: an int64 tensor holding each value mod 2⁶⁴."""
    return torch.tensor([(int(v) + 2**63) % 2**64 - 2**63 for v in values], dtype=torch.int64, device=device)


def keys_from_seed(seed: int, batch: int, device=None) -> torch.Tensor:
    """The keys of a run seeded ``seed``: ``seed + b`` for sample ``b`` (EDM's scheme, as torch generators)."""
    return as_keys([int(seed)], device) + torch.arange(batch, dtype=torch.int64, device=device)


class PhiloxGenerator:
    """Per-sample Philox streams of a batch, used where a list of per-sample ``torch.Generator``\\ s would be:
    ``normal(shape)`` returns the next draw, sample ``b`` from key ``keys[b]``.

    ``draw`` counts the draws. With keys on a GPU it is an int64 tensor there, so a draw makes no host read and
    replays correctly from a CUDA graph; on the CPU it is an int, and small draws are computed ``CACHE_DRAWS``
    at a time (the same numbers: each is a pure function of its index), which amortises the cost of each
    tensor operation. ``get_state`` / ``set_state`` save and restore the draw index and the keys, as a
    ``torch.Generator``'s state does.
    """

    def __init__(self, keys: torch.Tensor):
        self._set_keys(torch.as_tensor(keys, dtype=torch.int64).flatten())
        self.draw = torch.zeros((), dtype=torch.int64, device=self.device) if self._on_device else 0

    def _set_keys(self, keys: torch.Tensor) -> None:
        self.keys, self.device = keys, keys.device
        self._on_device = keys.device.type != "cpu"
        self.schedule = key_schedule(keys)
        self._cache = None  # (count, first draw index, its block_normals: (2, B, rows, count))

    @classmethod
    def from_seed(cls, seed: int, batch: int, device=None) -> "PhiloxGenerator":
        return cls(keys_from_seed(seed, batch, device))

    def __len__(self) -> int:
        return self.keys.shape[0]

    def normal(self, shape, dtype=None, device=None) -> torch.Tensor:
        """The next draw: standard normals of ``shape`` (``(B, ...)``; complex dtypes: circular, E|z|² = 1)."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self):
            raise ValueError(f"a Philox generator of {len(self)} samples cannot draw shape {shape}")
        dtype = dtype or torch.get_default_dtype()
        count = math.prod(shape[1:]) * (2 if dtype.is_complex else 1)
        z = self._next(count)
        if dtype.is_complex:
            z = torch.view_as_complex(z.reshape(-1, count // 2, 2) / 2**0.5)
        # always a copy: the draw may be a view of the cache, and a caller may write into it
        return z.reshape(shape).to(dtype=dtype, device=device if device is not None else self.device, copy=True)

    def _next(self, count: int) -> torch.Tensor:
        if self._on_device:
            z = normals(self.keys, self.draw, count, schedule=self.schedule)[:, 0]
            self.draw.add_(1)
            return z
        draw, cache = self.draw, self._cache
        if cache is None or cache[0] != count or not 0 <= draw - cache[1] < 2 * cache[2].shape[2]:
            first = draw - draw % 2  # a counter row holds two draws: compute both
            draws = max(2, min(CACHE_DRAWS, CACHE_NORMALS // max(1, len(self) * count)))
            block = block_normals(self.keys, first // 2, count, rows=(draws + 1) // 2, schedule=self.schedule)
            cache = self._cache = (count, first, block)
        self.draw = draw + 1
        i = draw - cache[1]
        return cache[2][i % 2, :, i // 2]

    def __getitem__(self, index: slice) -> "PhiloxGenerator":
        """The streams of the samples ``index`` (a slice), at the same draw index."""
        part = PhiloxGenerator(self.keys[index])
        part.set_state(torch.cat([self.get_state()[:1], part.keys.cpu()]))
        return part

    def get_state(self) -> torch.Tensor:
        """``[draw index, keys...]`` as an int64 tensor on the CPU."""
        draw = self.draw.reshape(1) if self._on_device else torch.tensor([self.draw], device=self.device)
        return torch.cat([draw, self.keys]).cpu()

    def set_state(self, state: torch.Tensor) -> None:
        state = state.to(dtype=torch.int64)
        self._set_keys(state[1:].to(self.device).clone())
        if self._on_device:
            self.draw.copy_(state[0])
        else:
            self.draw = int(state[0])

    def __repr__(self) -> str:
        keys = self.keys.tolist() if len(self) <= 4 else f"{int(self.keys[0])}..{int(self.keys[-1])}"
        return f"PhiloxGenerator(keys={keys}, draw={int(self.draw)}, device={self.device})"
