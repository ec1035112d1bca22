"""The tiny offline diffusers pipelines of ``diffusers_pipelines`` build, run, reproduce and round-trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from fixtures import (DIT_NULL_CLASS, FIXTURE_WORDS, count_unet_calls, tiny_clip_tokenizer,
                                 tiny_ddpm_pipeline, tiny_dit_pipeline, tiny_sd_pipeline, tiny_unet2d)

BATCH, STEPS, SIZE = 2, 3, 16
PROMPTS = ["a photo of a red cat", "a painting of a blue house"]


def run(pipe, seed: int = 0) -> np.ndarray:
    """One call: BATCH images of STEPS steps (classifier-free guidance 7.5 for SD) as an NHWC array."""
    gen = torch.Generator().manual_seed(seed)
    if hasattr(pipe, "tokenizer"):
        out = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, generator=gen, output_type="np")
    else:
        out = pipe(batch_size=BATCH, num_inference_steps=STEPS, generator=gen, output_type="np")
    return out.images


def public(config) -> dict:
    """A config without diffusers' bookkeeping keys (``_class_name``, ``_use_default_values``, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


BUILDERS = {"ddpm": tiny_ddpm_pipeline, "sd": tiny_sd_pipeline}


def build(kind: str, scheduler: str):
    pipe = BUILDERS[kind]()
    if scheduler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


def test_tokenizer_fixture():
    tok = tiny_clip_tokenizer()
    assert tok.model_max_length == 77
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    assert (tok.bos_token_id, tok.eos_token_id) == (len(tok) - 2, len(tok) - 1)
    for word in FIXTURE_WORDS:
        assert tok.tokenize(word) == [word + "</w>"]

    ids = tok(PROMPTS[0], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    words = PROMPTS[0].split()
    assert len(ids) == 77
    assert ids[0] == tok.bos_token_id and ids[len(words) + 1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[1:len(words) + 1]) == [w + "</w>" for w in words]
    assert all(i == tok.pad_token_id for i in ids[len(words) + 1:])
    assert max(ids) < len(tok)
    assert tok.decode(ids, skip_special_tokens=True) == PROMPTS[0]

    # Words outside the vocabulary fall back to byte-level symbols, never to <unk> (= <|endoftext|>).
    ids = tok("zebra's 42 quick-brown fox jumps!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1] and max(ids) < len(tok)

    long_ids = tok(" ".join(["cat"] * 100), padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long_ids) == 77 and long_ids[-1] == tok.eos_token_id
    assert set(long_ids[1:-1]) == {tok.convert_tokens_to_ids("cat</w>")}


def test_weights_are_seeded_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = tiny_unet2d(seed=0), tiny_unet2d(seed=0), tiny_unet2d(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)
    assert sum(p.numel() for p in a.parameters()) < 100_000


def test_default_schedulers():
    ddpm, sd = tiny_ddpm_pipeline(), tiny_sd_pipeline()
    assert type(ddpm.scheduler) is DDPMScheduler
    assert type(sd.scheduler) is DDIMScheduler
    cfg = sd.scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps) == (
        "scaled_linear", 0.00085, 0.012, 1000)
    assert (cfg.clip_sample, cfg.set_alpha_to_one, cfg.steps_offset, cfg.timestep_spacing, cfg.prediction_type) == (
        False, False, 1, "leading", "epsilon")
    assert sd.text_encoder.config.hidden_size == sd.unet.config.cross_attention_dim
    assert sd.text_encoder.config.vocab_size == len(sd.tokenizer)
    assert sd.safety_checker is None and sd.feature_extractor is None


@pytest.mark.parametrize("scheduler", ["default", "dpm"])
@pytest.mark.parametrize("kind", ["ddpm", "sd"])
def test_pipeline_runs_and_reproduces(kind, scheduler):
    pipe = build(kind, scheduler)
    with count_unet_calls(pipe) as nfe:
        images = run(pipe, seed=0)
    assert images.shape == (BATCH, SIZE, SIZE, 3) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert images.std() > 1e-3
    # Classifier-free guidance evaluates the conditional and unconditional batch in one call.
    assert (nfe.calls, nfe.rows) == (STEPS, STEPS * BATCH * (2 if kind == "sd" else 1))

    np.testing.assert_array_equal(run(pipe, seed=0), images)
    np.testing.assert_array_equal(run(build(kind, scheduler), seed=0), images)
    assert np.abs(run(pipe, seed=1) - images).max() > 1e-3


@pytest.mark.parametrize("kind", ["ddpm", "sd"])
def test_save_and_reload_offline(kind, tmp_path):
    pipe = build(kind, "dpm")
    images = run(pipe)
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is DPMSolverMultistepScheduler
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    np.testing.assert_array_equal(run(loaded), images)


@pytest.mark.parametrize("scheduler", ["default", "dpm"])
def test_dit_pipeline_runs_and_reproduces(scheduler):
    """The tiny DiT: class-conditioned, guided (a doubled batch per call), seeded, offline."""
    pipe = tiny_dit_pipeline()
    if scheduler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    transformer = pipe.transformer
    assert transformer.config.out_channels == 2 * transformer.config.in_channels  # a learned variance
    assert transformer.config.num_embeds_ada_norm == DIT_NULL_CLASS
    rows = []

    def hook(module, args, kwargs):
        rows.append((args[0] if args else kwargs["hidden_states"]).shape[0])

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    run = lambda labels, seed, w=4.0: pipe(class_labels=labels, guidance_scale=w, num_inference_steps=STEPS,
                                           generator=torch.Generator().manual_seed(seed), output_type="np").images
    try:
        images = run([1, 2], 0)
    finally:
        handle.remove()
    assert images.shape == (2, SIZE, SIZE, 3) and np.isfinite(images).all() and images.std() > 1e-3
    assert rows == [4] * STEPS  # conditional and unconditional halves in one call
    np.testing.assert_array_equal(run([1, 2], 0), images)
    assert np.abs(run([1, 2], 1) - images).max() > 1e-3
    relabelled = np.abs(run([3, 2], 0) - images)
    assert relabelled[0].max() > 1e-2 and relabelled[1].max() < 1e-6  # the label reaches its own image only
