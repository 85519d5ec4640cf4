"""The engine's own SD v1 models in plain torch: UNet (``unet``), VAE (``vae``), CLIP text
encoder (``clip``) and tokenizer (``tokenizer``).

They compute what diffusers' ``UNet2DConditionModel`` / ``AutoencoderKL`` and transformers'
``CLIPTextModel`` / ``CLIPTokenizer`` compute for SD v1 checkpoints, bit for bit on the same
device (tests/engine/test_nets*.py compare them), and keep their weights under the same names.
What they leave out is the libraries' import graphs: building them needs ``torch`` alone,
where diffusers' and transformers' model classes import seconds of mixins, loaders,
quantizers and scipy before a weight is read (docs/benchmarks.md, "Import budget").
The loader builds them (``models.build``) from the converted cache (``mlc.engine.convcache``)
or from a single-file checkpoint (``original``) when the configs are ones they implement
and the weights fit (``MLC_NATIVE_MODELS=0``: never); otherwise it builds the libraries'
classes (also for diffusers folders, original YAML configs and torch 2.0). DeepCache, token
merging, ``--compile``, CUDA graphs and ``--low_vram`` work on either.
"""
