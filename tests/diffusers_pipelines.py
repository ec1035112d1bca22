"""Tiny, deterministic diffusers pipelines built offline, for tests: DDPM (a ``UNet2DModel``), Stable
Diffusion (text-conditioned latents), DiT (class-conditioned latents, a transformer with a learned
variance), and the flow-matching Stable Diffusion 3 (text-to-image and image-to-image) and Flux.

Every builder constructs its models from configs (never from a hub name) with weights drawn under
``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``, so the same seed gives the same weights
and the caller's global RNG is left untouched. The Stable-Diffusion pipeline's tokenizer is a CLIP BPE
loaded from ``tests/fixtures/tiny_clip_tokenizer`` (the 256 byte-level symbols, with and without
``</w>``, so any text tokenizes without ``<unk>``; a few dozen whole words such as "a photo of a red
cat"; ``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids, as in CLIP).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, DiTTransformer2DModel,
                       FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, SchedulerMixin,
                       SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, UNet2DConditionModel, UNet2DModel)

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "tiny_clip_tokenizer"
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
