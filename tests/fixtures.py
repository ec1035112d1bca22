"""What the tests share, in one module (no test module imports another): closed-form references for
Gaussian data under a linear SDE, one instance of every SDE family and schedule (``ALL_SDES``; the ``sde``
fixture in ``conftest.py`` runs a test once per SDE), tiny deterministic diffusers pipelines built offline,
SGMSE-style Lightning checkpoints, and the small helpers of the application tests.

The diffusers pipelines: DDPM (a ``UNet2DModel``), Stable Diffusion (text-conditioned latents), DiT
(class-conditioned latents, a transformer with a learned variance), and the flow-matching Stable
Diffusion 3 (text-to-image and image-to-image) and Flux. Every builder constructs its models from configs
(never from a hub name) with weights drawn under ``torch.manual_seed(seed)`` inside
``torch.random.fork_rng``, so the same seed gives the same weights and the caller's global RNG is left
untouched. The Stable-Diffusion pipeline's tokenizer is a CLIP BPE loaded from
``tests/data/tiny_clip_tokenizer`` (the 256 byte-level symbols, with and without ``</w>``, so any text
tokenizes without ``<unk>``; a few dozen whole words such as "a photo of a red cat";
``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids, as in CLIP).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, DiTTransformer2DModel,
                       FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, SchedulerMixin,
                       SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, UNet2DConditionModel, UNet2DModel)

from revsde import sde as S
from revsde.nets.gmm import GaussianMixture, exact_model
from revsde.nets.ncsnpp import ncsnpp_backbone


# --- paths ----------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
#: the tests folder
TESTS = ROOT / "tests"


# --- every SDE family and schedule ----------------------------------------------------------------
def ddpm_linear_alphas_cumprod(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The DDPM training table: ``ᾱ_i = Π_{j≤i} (1 − β_j)`` with β linear from 1e-4 to 0.02."""
    betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def assert_same_weights(a: dict, b: dict) -> None:
    """Two training checkpoints (``trainer.fit``'s dicts) hold bit-identical weights and EMA weights."""
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k}"


ALL_SDES = [
    ("vp", lambda: S.VPSDE()),
    ("vp_cosine", lambda: S.VPSDE.cosine()),
    ("vp_ddpm", lambda: S.VPSDE.from_alphas_cumprod(ddpm_linear_alphas_cumprod())),
    ("subvp", lambda: S.SubVPSDE()),
    ("ve", lambda: S.VESDE()),
    ("mr_cosine", lambda: S.MRSDE()),
    ("mr_linear", lambda: S.MRSDE(schedule="linear")),
    ("mr_constant", lambda: S.MRSDE(schedule="constant")),
    ("mr_irsde", lambda: S.MRSDE(convention="irsde")),
    ("ouve", lambda: S.OUVESDE()),
    ("rf", lambda: S.RectifiedFlow()),
]


SDE_IDS = [name for name, _ in ALL_SDES]


def is_mean_reverting(sde) -> bool:
    """MR and OUVE SDEs revert to an observation μ ≠ 0; the others have μ = 0."""
    return isinstance(sde, (S.MRSDE, S.OUVESDE))


def regular_t_max(sde) -> float:
    """``t_max``, or 9/10 of the way there where f and g² are infinite at ``t_max`` (rectified flow's t = 1,
    where α = 0): the end of the range a forward simulation or a quadrature of the coefficients can use."""
    if torch.isfinite(sde.f(sde.t_max)):
        return sde.t_max
    return sde.t_min + 0.9 * (sde.t_max - sde.t_min)


def knots(sde) -> torch.Tensor | None:
    """The times where a tabulated schedule's pieces meet (None for closed-form schedules)."""
    if isinstance(sde, S.DiscreteVPSDE):
        return torch.linspace(0, 1, sde.num_train_timesteps, dtype=torch.float64)
    if isinstance(sde, S.MRSDE):
        return torch.arange(sde.steps + 1, dtype=torch.float64) / sde.steps
    return None


def interior_times(sde, n: int = 41) -> torch.Tensor:
    """``n`` times strictly inside ``(t_min, t_max)``; for tabulated schedules, mid-points between knots
    (so a finite-difference stencil of half-width < half a segment never crosses a knot)."""
    grid = torch.linspace(sde.t_min, sde.t_max, n + 2, dtype=torch.float64)[1:-1]
    k = knots(sde)
    if k is None:
        return grid
    seg = float(k[1] - k[0])
    mids = (torch.floor(grid / seg) + 0.5) * seg
    mids = mids[(mids > sde.t_min) & (mids < sde.t_max)]
    return torch.unique(mids)


def steppable_samplers() -> list[str]:
    """Every registry sampler (default options) whose evaluation times are known in advance."""
    import revsde

    names = []
    for name in revsde.samplers.available():
        try:
            revsde.samplers.get(name).query_times(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
        except ValueError:
            continue
        names.append(name)
    return names


# --- closed-form references for Gaussian data -----------------------------------------------------
MEAN = [0.5, -0.3]
COV = [[1.0, 0.3], [0.3, 0.5]]
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)


def gaussian() -> GaussianMixture:
    return GaussianMixture.gaussian(MEAN, COV)


def two_modes() -> GaussianMixture:
    """Two well-separated modes: a score that is nonlinear in x."""
    return GaussianMixture([0.3, 0.7], [[1.0, 0.5], [-0.8, -0.2]],
                           [[[0.2, 0.05], [0.05, 0.1]], [[0.15, 0.0], [0.0, 0.3]]])


def mu_for(sde):
    """μ ≠ 0 for mean-reverting SDEs (their μ is the degraded observation), None otherwise."""
    return MU if type(sde).__name__ in ("MRSDE", "OUVESDE") else None


def exact_marginal_draw(mixture: GaussianMixture, sde, t: float, n: int, mu, seed: int) -> torch.Tensor:
    mean, cov = mixture.marginal_moments(sde, t, mu)
    gen = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, mean.numel(), generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T


def pf_ode_map(mixture: GaussianMixture, sde, x: torch.Tensor, t0, t1, mu=None) -> torch.Tensor:
    return mixture.pf_ode_map(sde, x, t0, t1, mu)


def moment_tolerances(cov: torch.Tensor, n: int, z: float = 5.0):
    """``z`` standard errors of the sample mean and of each sample-covariance entry (Gaussian data)."""
    d = cov.diagonal()
    mean_tol = z * torch.sqrt(d / n)
    cov_tol = z * torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)
    return mean_tol, cov_tol


def loglog_slope(ns, errors) -> float:
    """Least-squares slope of log(error) against log(1/N): the measured convergence order."""
    x = torch.log(1 / torch.tensor(ns, dtype=torch.float64))
    y = torch.log(torch.tensor(errors, dtype=torch.float64))
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


__all__ = ["gaussian", "two_modes", "mu_for", "exact_marginal_draw", "pf_ode_map", "moment_tolerances", "loglog_slope",
           "exact_model"]


# --- tiny diffusers pipelines ---------------------------------------------------------------------
TOKENIZER_DIR = TESTS / "data" / "tiny_clip_tokenizer"
# Whole words of the fixture vocabulary: each tokenizes to a single id.
FIXTURE_WORDS = ("a an the of on in with and photo picture painting drawing cat cats dog dogs bird horse car "
                 "house tree flower mountain river sky sun red blue green yellow white black big small").split()
CROSS_ATTENTION_DIM = 16
LATENT_SIZE = 8  # the SD UNet's sample_size; the VAE upsamples by 2, so images are 16 x 16 px


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Fork the CPU RNG and seed it: model init is reproducible and the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_unet2d(sample_size: int = 16, channels: int = 3, seed: int = 0,
                out_channels: int | None = None) -> UNet2DModel:
    """An unconditional ``UNet2DModel`` with two resolution levels of 8 and 16 channels (``out_channels``:
    default ``channels``; twice that for a learned variance)."""
    with _seeded(seed):
        unet = UNet2DModel(sample_size=sample_size, in_channels=channels,
                           out_channels=channels if out_channels is None else out_channels,
                           layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                           down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"))
    return unet.eval()


def tiny_ddpm_pipeline(scheduler: SchedulerMixin | None = None, sample_size: int = 16,
                       seed: int = 0) -> DDPMPipeline:
    """A CPU ``DDPMPipeline`` on :func:`tiny_unet2d` (default scheduler: ``DDPMScheduler()``)."""
    pipe = DDPMPipeline(unet=tiny_unet2d(sample_size=sample_size, seed=seed),
                        scheduler=scheduler if scheduler is not None else DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def sd_ddim_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion v1's training table and timestep conventions."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def tiny_clip_tokenizer():
    """The fixture ``CLIPTokenizer`` (``model_max_length`` 77, pad = eos = ``<|endoftext|>``)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


def tiny_clip_text_model(vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int,
                         seed: int = 0):
    """A 2-layer, 2-head ``CLIPTextModel`` of width :data:`CROSS_ATTENTION_DIM`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=CROSS_ATTENTION_DIM, intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    with _seeded(seed):
        model = CLIPTextModel(config)
    return model.eval()


def tiny_sd_pipeline(scheduler: SchedulerMixin | None = None, seed: int = 0) -> StableDiffusionPipeline:
    """A CPU ``StableDiffusionPipeline``: 4-channel 8 x 8 latents, 16 x 16 px images, no safety checker
    (default scheduler: :func:`sd_ddim_scheduler`)."""
    tokenizer = tiny_clip_tokenizer()
    text_encoder = tiny_clip_text_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                        tokenizer.pad_token_id, seed=seed)
    with _seeded(seed):
        unet = UNet2DConditionModel(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(8, 16), norm_num_groups=4,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=2)
        vae = _tiny_vae()
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet.eval(),
                                   scheduler=scheduler if scheduler is not None else sd_ddim_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def _tiny_vae() -> AutoencoderKL:
    """A 4-channel-latent ``AutoencoderKL`` that upsamples by 2 (weights from the caller's RNG)."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         layers_per_block=1, norm_num_groups=4, sample_size=2 * LATENT_SIZE,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))


#: the DiT's null class (classifier-free guidance's unconditional label), as ``DiTPipeline`` uses it
DIT_NULL_CLASS = 1000


def tiny_dit_pipeline(scheduler: SchedulerMixin | None = None, seed: int = 0) -> DiTPipeline:
    """A CPU ``DiTPipeline``: a 1-layer, 2-head ``DiTTransformer2DModel`` on 4-channel 8 x 8 latents with a
    learned variance (8 output channels, which the pipeline splits off itself), 1000 classes plus the
    null class, and the tiny VAE (16 x 16 px images). Default scheduler: ``DDIMScheduler()``."""
    with _seeded(seed):
        transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                            num_layers=1, sample_size=LATENT_SIZE, patch_size=2,
                                            num_embeds_ada_norm=DIT_NULL_CLASS, norm_num_groups=4)
        vae = _tiny_vae()
    pipe = DiTPipeline(transformer=transformer.eval(), vae=vae.eval(),
                       scheduler=scheduler if scheduler is not None else DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def _tiny_flow_vae(latent_channels: int, block_out_channels: tuple) -> AutoencoderKL:
    """The SD3 / Flux VAE of diffusers' fast tests: a latent shift and scale, no quant convs."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=block_out_channels, layers_per_block=1, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
                         up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


#: SD3's two CLIP encoders (each width 16) concatenate to 32: the joint attention and pooled widths
SD3_WIDTH = 2 * CROSS_ATTENTION_DIM


def tiny_sd3_pipeline(scheduler: SchedulerMixin | None = None, seed: int = 0, img2img: bool = False):
    """A CPU ``StableDiffusion3Pipeline`` (``img2img``: ``StableDiffusion3Img2ImgPipeline``): a 1-layer
    ``SD3Transformer2DModel`` on 4-channel 8 x 8 latents, the two CLIP encoders with projection on the
    fixture tokenizer and no T5 (its embeddings are zeros, as diffusers does without it), the tiny
    VAE (16 x 16 px). Default scheduler: ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` (SD3's)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=CROSS_ATTENTION_DIM, intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=CROSS_ATTENTION_DIM, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with _seeded(seed):
        text_encoders = [CLIPTextModelWithProjection(config).eval() for _ in range(2)]
        transformer = SD3Transformer2DModel(sample_size=LATENT_SIZE, patch_size=1, in_channels=4, out_channels=4,
                                            num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                            caption_projection_dim=16, joint_attention_dim=SD3_WIDTH,
                                            pooled_projection_dim=SD3_WIDTH)
        vae = _tiny_flow_vae(4, (8, 16))
    cls = StableDiffusion3Img2ImgPipeline if img2img else StableDiffusion3Pipeline
    pipe = cls(transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoders[0], tokenizer=tokenizer,
               text_encoder_2=text_encoders[1], tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None,
               scheduler=scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


#: Flux-dev's scheduler config: Flux's dynamic shift from the image's sequence length
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)
FLUX_WIDTH = 32


def tiny_flux_pipeline(scheduler: SchedulerMixin | None = None, seed: int = 0) -> FluxPipeline:
    """A CPU ``FluxPipeline`` without text encoders (call it with ``prompt_embeds`` and
    ``pooled_prompt_embeds`` of width :data:`FLUX_WIDTH`: :func:`flux_embeddings`): diffusers' fast-test
    ``FluxTransformer2DModel`` (1 double and 1 single block) on 1-channel latents packed 2 x 2, a
    one-level VAE (8 x 8 px images). Default scheduler: ``FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)``."""
    with _seeded(seed):
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2,
                                             joint_attention_dim=FLUX_WIDTH, pooled_projection_dim=FLUX_WIDTH,
                                             axes_dims_rope=[4, 4, 8])
        vae = _tiny_flow_vae(1, (4,))
    scheduler = scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae.eval(), text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def flux_embeddings(batch: int, seed: int = 0, tokens: int = 6) -> dict:
    """Stand-in text embeddings for :func:`tiny_flux_pipeline` (``prompt_embeds``, ``pooled_prompt_embeds``)."""
    gen = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": torch.randn(batch, tokens, FLUX_WIDTH, generator=gen),
            "pooled_prompt_embeds": torch.randn(batch, FLUX_WIDTH, generator=gen)}


@dataclass
class UNetCalls:
    """What :func:`count_unet_calls` saw: forward ``calls`` and the batch ``rows`` they evaluated."""
    calls: int = 0
    rows: int = 0


@contextlib.contextmanager
def count_unet_calls(pipe) -> Iterator[UNetCalls]:
    """Count ``pipe.unet`` (or ``pipe.transformer``) forward calls inside the block (a classifier-free-guidance
    step is one call of twice the batch: NFE = ``calls``, rows = ``calls x 2 x batch``)."""
    counter = UNetCalls()

    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        counter.calls += 1
        counter.rows += sample.shape[0]

    network = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    handle = network.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()


# --- diffusers flow configs -----------------------------------------------------------------------
STEPPABLE = steppable_samplers()

WAN = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=5.0)  # UniPC

SANA = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)  # DPM-Solver++


# --- SGMSE-style Lightning checkpoints ------------------------------------------------------------
SMALL = dict(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32)


def _stub_modules(patch, *dotted):
    """Register empty modules for ``dotted`` names and their parents so classes defined there pickle."""
    made = {}
    for name in dotted:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in made:
                made[prefix] = types.ModuleType(prefix)
                patch.setitem(sys.modules, prefix, made[prefix])
    return made


def _small_net(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    net = ncsnpp_backbone("ncsnpp", **{**SMALL, **kwargs})
    with torch.no_grad():
        for p in net.parameters():  # init_scale 0 leaves layers at 1e-10: give every weight a visible value
            p.add_(0.05 * torch.randn_like(p))
    return net


HPARAMS = dict(backbone="ncsnpp", sde="ouve", lr=1e-4, ema_decay=0.999, t_eps=0.04, theta=2.0, sigma_min=0.1,
               sigma_max=1.0, N=25, n_fft=510, hop_length=128, num_frames=256, window="hann", spec_factor=0.065,
               spec_abs_exponent=0.667, normalize="noisy", transform_type="exponent", centered=False,
               nf=8, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[16], image_size=32,
               loss_type="score_matching", pesq_weight=5e-4, num_eval_files=20)


def _save_lightning(path, monkeypatch, net, *, hparams=None, state=None, ema="all", extra=None):
    """A file laid out like SGMSE's Lightning checkpoints: AttributeDict hyper-parameters holding a class,
    ``dnn.``-prefixed state_dict with ``pesq_loss.*`` entries, torch-ema state, optimizer and loop state.
    The stub modules exist only while saving."""
    raw = net.state_dict() if state is None else state
    with monkeypatch.context() as patch:
        mods = _stub_modules(patch, "fakesgmse.data_module", "lightning_fabric.utilities.data")

        class AttributeDict(dict):
            pass

        class SpecsDataModule:
            pass

        AttributeDict.__module__, AttributeDict.__qualname__ = "lightning_fabric.utilities.data", "AttributeDict"
        SpecsDataModule.__module__, SpecsDataModule.__qualname__ = "fakesgmse.data_module", "SpecsDataModule"
        mods["lightning_fabric.utilities.data"].AttributeDict = AttributeDict
        mods["fakesgmse.data_module"].SpecsDataModule = SpecsDataModule
        ckpt = {
            "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.9.5",
            "state_dict": OrderedDict([*((f"dnn.{k}", v) for k, v in raw.items()),
                                       ("pesq_loss.model.weight", torch.ones(3))]),
            "hyper_parameters": AttributeDict({**HPARAMS, "data_module_cls": SpecsDataModule, **(hparams or {})}),
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                                  "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}],
            "lr_schedulers": [], "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'pesq'}": {"best_model_score": torch.tensor(2.9)}},
            **(extra or {}),
        }
        params = list(net.named_parameters())
        if ema == "all":  # torch-ema 0.3: every parameter, W included, in parameters() order
            shadow = [p.detach() + 0.5 for _, p in params]
        elif ema == "trainable":  # torch-ema 0.2: only those with requires_grad
            shadow = [p.detach() + 0.5 for _, p in params if p.requires_grad]
        else:
            shadow = ema
        if shadow is not None:
            ckpt["ema"] = {"decay": 0.999, "num_updates": 1200, "shadow_params": shadow, "collected_params": None}
        torch.save(ckpt, path)
    assert "fakesgmse" not in sys.modules and "lightning_fabric" not in sys.modules


# --- speech data ----------------------------------------------------------------------------------
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None and not os.environ.get("CI"),
    reason="espeak-ng is not on PATH (Debian package espeak-ng); under CI this test runs and fails instead")


# --- image bench ----------------------------------------------------------------------------------
LABELS = ["mrs 2 logsnr", "mrs SDE 2 logsnr", "diffusers SDE-DPM-Solver++ 2M", "diffusers UniPC"]


def projection_space():
    """A fixed random projection of the pixels as the feature space, 300 uniform images as the reference."""
    from revsde.apps.image.scores import FeatureSpace

    g = torch.Generator().manual_seed(0)
    proj = torch.randn(64, 6, generator=g, dtype=torch.float64)
    space = FeatureSpace("FD-test", lambda x01: x01.reshape(len(x01), -1).double() @ proj, None, None, None,
                           "random images")
    feats = space.features(torch.rand(300, 1, 8, 8, generator=g))
    space.ref_features, space.ref_mean, space.ref_cov = feats, feats.mean(0), torch.cov(feats.T)
    return space
