"""The equivalence contract with diffusers' pipeline, and generation with no network."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from mlc.engine import txt2img
from mlc.engine.generate import Renderer, Settings, plan
from mlc.engine.schedulers import make_scheduler

from .conftest import SIZE, TinyModel, small_run

PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def pipeline_cls():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


@pytest.mark.parametrize(
    ("sampler", "eta", "negative"),
    [
        ("ddim", 0.0, ""),
        ("ddim", 0.5, ""),
        ("plms", 0.0, ""),
        ("euler_a", 0.0, "ugly"),
        ("dpmpp_2m_karras", 0.0, ""),
        ("dpm_solver", 0.0, ""),
    ],
)
def test_equals_stable_diffusion_pipeline(
    components, library_components, pipeline_cls, sampler, eta, negative
):
    """n_samples 1: the engine (its own models) makes the same image as StableDiffusionPipeline
    (diffusers' and transformers' classes, the same weights), within 1/255, CPU fp32."""
    steps, seed, scale = 5, 1234, 7.5
    renderer = Renderer(components)
    settings = Settings(sampler, steps, scale, eta, SIZE, SIZE)
    specs = plan([[PROMPT]], n_iter=1, seed=seed, negative_prompt=negative)[0]
    (mine,) = renderer.render(specs, settings)
    lib = library_components
    pipe = pipeline_cls(
        vae=lib.vae,
        text_encoder=lib.text_encoder,
        tokenizer=lib.tokenizer,
        unet=lib.unet,
        scheduler=make_scheduler(sampler, lib.schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPT,
        negative_prompt=negative or None,
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        guidance_scale=scale,
        eta=eta,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    diff = np.abs(np.asarray(mine.image, np.int16) - np.asarray(theirs, np.int16))
    assert diff.max() <= 1, f"{sampler}: max diff {diff.max()}"


@pytest.fixture
def no_network(monkeypatch, tmp_path: Path):
    """Any non-loopback connection fails; an empty HF cache; the hub switched off."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost")):
            return real_connect(self, address)
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        attempts.append(address)
        raise OSError(f"network disabled in tests: {address}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: guarded(socket.socket(), a[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    return attempts


def test_generation_works_with_no_network(no_network, tiny: TinyModel, tmp_path: Path, capsys):
    code = txt2img.main(
        [
            *small_run(tiny.ckpt, 2),
            "--n_samples",
            "1",
            "--n_iter",
            "1",
            "--outdir",
            str(tmp_path / "o"),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(json.loads(out)["files"]) == 1
    assert no_network == []  # nothing even tried


def test_loading_a_folder_and_bundled_parts_offline(no_network, library_components, tmp_path: Path):
    from mlc.engine.loading import load

    folder = tmp_path / "m"
    library_components.unet.save_pretrained(folder / "unet")
    library_components.vae.save_pretrained(folder / "vae")
    library_components.text_encoder.save_pretrained(folder / "text_encoder")
    assert load(folder).tokenizer is not None
    assert no_network == []
