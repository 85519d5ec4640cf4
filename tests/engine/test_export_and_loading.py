"""Exporter round trip, single-file and folder loading, sidecar configs, safe pickles."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from mlc.engine.checkpoint import CheckpointError, read_checkpoint, resolve
from mlc.engine.loading import load

from .conftest import TinyModel, copy_model, run_cli, small_run


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


def test_export_roundtrip_is_exact(tiny: TinyModel, components):
    """tiny_components -> export -> from_single_file gives the same weights (stored fp16)."""
    from mlc.engine.demo import tiny_components

    unet, vae, text = tiny_components()
    for model in (unet, vae, text):
        model.to(torch.float16).to(torch.float32)
    _same_weights(unet, components.unet)
    _same_weights(vae, components.vae)
    _same_weights(text, components.text_encoder)


def test_export_layout_is_the_original_one(tiny: TinyModel):
    sd = read_checkpoint(tiny.safetensors)
    assert "model.diffusion_model.input_blocks.0.0.weight" in sd
    assert "model.diffusion_model.out.2.weight" in sd
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in sd
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in sd
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.") for k in sd)


def test_ckpt_and_safetensors_load_the_same(tiny: TinyModel, components):
    from_ckpt = load(tiny.ckpt)
    _same_weights(from_ckpt.unet, components.unet)
    _same_weights(from_ckpt.text_encoder, components.text_encoder)
    assert from_ckpt.source.config_dir == tiny.config  # the sidecar folder


def test_diffusers_folder_loads(tmp_path: Path, components, library_components):
    """A folder saved by diffusers/transformers loads (their classes) with the weights the
    single file gives the engine's own models."""
    folder = tmp_path / "model"
    library_components.unet.save_pretrained(folder / "unet")
    library_components.vae.save_pretrained(folder / "vae")
    library_components.text_encoder.save_pretrained(folder / "text_encoder")
    loaded = load(folder)
    _same_weights(loaded.unet, components.unet)
    _same_weights(loaded.text_encoder, components.text_encoder)
    assert loaded.tokenizer("a").input_ids == components.tokenizer("a").input_ids


TINY_YAML = """\
model:
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    scale_factor: 0.18215
    unet_config:
      params:
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [1]
        num_res_blocks: 1
        channel_mult: [1, 2]
        num_heads: 4
        transformer_depth: 1
        context_dim: 32
    first_stage_config:
      params:
        embed_dim: 4
        ddconfig: {z_channels: 4, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 1, 1, 1],
                   num_res_blocks: 1}
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        text_config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                      num_attention_heads: 4, projection_dim: 32}
"""


def test_yaml_sidecar_gives_the_same_model(tmp_path: Path, tiny: TinyModel, components):
    """An original inference YAML beside the file (<stem>.yaml) is used automatically."""
    ckpt = tmp_path / "m.safetensors"
    shutil.copy2(tiny.safetensors, ckpt)
    (tmp_path / "m.yaml").write_text(TINY_YAML)
    src = resolve(ckpt)
    assert src.yaml is not None and src.config_label.endswith("m.yaml")
    loaded = load(ckpt)
    _same_weights(loaded.unet, components.unet)
    _same_weights(loaded.vae, components.vae)
    _same_weights(loaded.text_encoder, components.text_encoder)
    assert loaded.schedule["beta_end"] == pytest.approx(0.012)


def test_explicit_config_beats_sidecar(tmp_path: Path, tiny: TinyModel):
    from mlc.engine import CONFIG_DIR

    ckpt = copy_model(tiny, tmp_path)
    assert resolve(ckpt).config_dir == tmp_path / "tiny.config"
    assert resolve(ckpt, CONFIG_DIR).config_dir == CONFIG_DIR
    # The classic default path falls back to the bundled YAML when it is not there.
    assert resolve(ckpt, "configs/stable-diffusion/v1-inference.yaml").yaml is not None


def test_mismatched_config_is_a_clear_error(tiny: TinyModel):
    from mlc.engine import CONFIG_DIR

    with pytest.raises(CheckpointError, match="does not match"):
        load(tiny.safetensors, CONFIG_DIR)  # full-size config, tiny weights


def test_missing_checkpoint_names_path_and_setup_command(tmp_path: Path):
    with pytest.raises(CheckpointError) as err:
        resolve(tmp_path / "nope" / "v1-5-pruned-emaonly.ckpt")
    text = str(err.value)
    assert str(tmp_path / "nope" / "v1-5-pruned-emaonly.ckpt") in text
    assert "mlc setup NAME stable-diffusion-v1-5" in text


def test_corrupt_and_unrelated_files_are_refused(tmp_path: Path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError, match="not a valid safetensors") as err:
        read_checkpoint(bad_st)
    text = str(err.value)
    assert text.startswith(f"cannot read {bad_st}: not a valid safetensors file (")
    assert "\n" not in text
    other = tmp_path / "other.safetensors"
    save_file({"classifier.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion v1 checkpoint"):
        load(other)


class _Evil:
    """Unpickling this runs os.system: a checkpoint must never do that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path):
    path, marker = _evil_ckpt(tmp_path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert "run code (posix.system)" in str(err.value) and "safetensors" in str(err.value)
    assert not marker.exists()


def test_malicious_pickle_via_cli(tmp_path: Path):
    path, marker = _evil_ckpt(tmp_path)
    proc = run_cli(
        *small_run(path),
        "--outdir",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 1
    assert "refusing to load" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "out" / "samples").exists()


def test_plain_pickle_helper_is_not_used():
    """Checkpoints are never read with pickle.load / torch.load without weights_only."""
    import inspect

    from mlc.engine import checkpoint, convcache, loading

    source = inspect.getsource(checkpoint)
    assert "weights_only=True" in source and "pickle.load(" not in source
    for module in (loading, convcache):  # the other readers go through checkpoint or safetensors
        assert "torch.load(" not in inspect.getsource(module)
        assert "pickle.load(" not in inspect.getsource(module)
    assert pickle  # imported for the UnpicklingError type only


def test_full_size_layout_matches_sd15_names():
    """The exporter gives SD 1.5's real key names for the bundled (full-size) configs.

    Built on the meta device: no memory, no compute.
    """
    from accelerate import init_empty_weights
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mlc.engine import CONFIG_DIR
    from mlc.engine.export import text_encoder_to_ldm, unet_to_ldm, vae_to_ldm

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(CONFIG_DIR / "unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIG_DIR / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIG_DIR / "text_encoder"))
    keys = set(unet_to_ldm(unet.state_dict(), dict(unet.config)))
    keys |= set(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    keys |= set(text_encoder_to_ldm(text.state_dict()))
    for known in (
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.8.2.conv.weight",
        "model.diffusion_model.output_blocks.11.1.proj_out.weight",
        "model.diffusion_model.time_embed.2.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert known in keys, known
    # SD 1.5 files hold 1143 tensors: these 1130, 12 schedule buffers and position_ids.
    assert len(keys) == 1130
