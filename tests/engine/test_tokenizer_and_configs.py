"""The bundled SD v1 config folder and CLIP tokenizer."""

from __future__ import annotations

import json

from mlc.engine import CONFIG_DIR, V1_INFERENCE_YAML


def test_bundled_folder_has_every_component():
    for part in (
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "model_index.json",
    ):
        assert (CONFIG_DIR / part).is_file(), part
    assert V1_INFERENCE_YAML.is_file()
    sched = json.loads((CONFIG_DIR / "scheduler/scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "scaled_linear" and sched["steps_offset"] == 1


def test_tokenizer_matches_clip_vit_l14():
    from mlc.engine.checkpoint import ModelSource
    from mlc.engine.loading import load_tokenizer

    tok = load_tokenizer(ModelSource(CONFIG_DIR, False, CONFIG_DIR))
    ids = tok("a photograph of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert len(tok) == 49408
    padded = tok("x", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


def test_yaml_config_matches_bundled_folder():
    """v1-inference.yaml and the bundled folder describe the same UNet and VAE."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    from mlc.engine.checkpoint import read_yaml

    yaml = read_yaml(V1_INFERENCE_YAML)
    import torch

    fake_ckpt = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 1, 1)}
    unet = create_unet_diffusers_config_from_ldm(yaml, fake_ckpt)
    vae = create_vae_diffusers_config_from_ldm(yaml, fake_ckpt)
    bundled_unet = json.loads((CONFIG_DIR / "unet/config.json").read_text())
    bundled_vae = json.loads((CONFIG_DIR / "vae/config.json").read_text())
    for key in (
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "cross_attention_dim",
        "attention_head_dim",
        "in_channels",
        "out_channels",
    ):
        value = list(unet[key]) if isinstance(unet[key], tuple) else unet[key]
        assert value == bundled_unet[key], key
    for key in ("block_out_channels", "latent_channels", "layers_per_block", "scaling_factor"):
        assert vae[key] == bundled_vae[key]
