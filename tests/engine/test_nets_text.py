"""The engine's own CLIP text encoder and tokenizer (``mlc.engine.nets.clip`` / ``.tokenizer``)
against transformers' ``CLIPTextModel`` / ``CLIPTokenizer``: the same weight names, the same
numbers bit for bit, the same ids, and neither library imported to build or run them."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from mlc.engine import CONFIG_DIR
from mlc.engine.nets.clip import TextEncoder, check_config
from mlc.engine.nets.tokenizer import ClipTokenizer

TOKENIZER_DIR = Path(CONFIG_DIR) / "tokenizer"
SD_TEXT_CONFIG = json.loads((Path(CONFIG_DIR) / "text_encoder" / "config.json").read_text())
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-5,
    "projection_dim": 16,
}
PROMPTS = [
    "a photo of a cat",
    "A PHOTO OF A Cat!!!",
    "what?!... no---way ;;",
    "1920s street, 3.5 stars, 100% real",
    "don't stop, it's fine, IT'S, they'll, we've, 'S",
    "café naïve résumé İstanbul straße",
    "東京の夜景、猫",
    "🐱🔥 emoji 👩‍👩‍👧 \U0001f600",
    "tab\there\nnewline   many  spaces\r\n",
    "  leading and trailing  ",
    "",
    "<|startoftext|>hello<|endoftext|> world",
    "<|STARTOFTEXT|> x <|EndOfText|>",
    "(masterpiece:1.2), [foo], {bar}, ((best quality)), <lora:x:0.8>",
    "Ａｂｃ full-width, ﬁ ligature, e\u0301 combining, \u00a0nbsp\u2003em",
    "ΑΒΓ Ελληνικά مرحبا",
    "a very long prompt " * 40,
    "x" * 300,
    "<|endoftext|>" * 90,
]


def _random_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ 09'.,!?\t\n-_()[]:<|>éüñ東京🐱\u0301\u00a0ß"
    out = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(n)]
    for _ in range(n // 2):  # any code point but surrogates
        chars = (chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(0, 30)))
        out.append("".join(c for c in chars if not 0xD800 <= ord(c) < 0xE000))
    return out


@pytest.fixture(scope="module")
def tokenizers() -> tuple[CLIPTokenizer, ClipTokenizer]:
    ref = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    return ref, ClipTokenizer.from_folder(TOKENIZER_DIR)


def _engine_call(tok, texts: list[str]) -> torch.Tensor:
    """The call ``Renderer.encode`` makes."""
    return tok(
        texts,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _pair(config: dict, seed: int = 0) -> tuple[CLIPTextModel, TextEncoder]:
    """transformers' model with random weights (biases and norms too), and ours built on the
    meta device from its ``to_dict()`` and given the same tensors."""
    torch.manual_seed(seed)
    ref = CLIPTextModel(CLIPTextConfig(**config)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    with torch.device("meta"):
        mine = TextEncoder(ref.config.to_dict())
    mine.load_state_dict(ref.state_dict(), assign=True)
    return ref, mine


def _ids(tokenizers) -> torch.Tensor:
    """Two padded prompts (EOS padding) and two rows of random ids."""
    ref, _ = tokenizers
    ids = _engine_call(ref, ["a photo of a cat", "(masterpiece:1.2), a castle, 1920s"])
    rand = torch.randint(0, 49406, (2, 77), generator=torch.Generator().manual_seed(1))
    rand[0, 5] = 49407
    return torch.cat([ids, rand])


def _assert_same(ref, mine, ids, mask=None) -> None:
    with torch.no_grad():
        want = ref(ids, attention_mask=mask)
        got = mine(ids, attention_mask=mask)
    assert torch.equal(want.last_hidden_state, got[0])
    assert torch.equal(want.pooler_output, got[1])
    assert got[0].abs().max() > 0


def test_weight_names_shapes_and_buffers_are_transformers() -> None:
    ref, mine = _pair(SMALL)
    want, got = ref.state_dict(), mine.state_dict()
    assert list(got) == list(want)
    assert all(got[k].shape == want[k].shape for k in want)
    assert "embeddings.token_embedding.weight" in got and "final_layer_norm.bias" in got
    assert not any(k.endswith("position_ids") for k in got)  # not persistent in transformers


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("eos", [2, 49407], ids=["eos-2-argmax", "eos-first"])
def test_encoder_is_bit_identical(tokenizers, act, eos) -> None:
    ref, mine = _pair({**SMALL, "hidden_act": act, "eos_token_id": eos, "layer_norm_eps": 1e-6})
    ids = _ids(tokenizers)
    _assert_same(ref, mine, ids)
    _assert_same(ref, mine, ids[:2])  # batch 2, the engine's prompts
    _assert_same(ref, mine, ids[:1, :9])  # shorter than max_position_embeddings
    _assert_same(ref, mine, ids[:1, :1])


def test_encoder_with_attention_mask_is_bit_identical(tokenizers) -> None:
    ref, mine = _pair(SMALL, seed=1)
    ids = _ids(tokenizers)
    _assert_same(ref, mine, ids, torch.ones_like(ids))  # nothing padded: plain causal
    mask = (ids != 49407).long()
    mask[:, 0] = 1
    _assert_same(ref, mine, ids, mask)


def test_encoder_bf16_is_bit_identical(tokenizers) -> None:
    ref, mine = _pair(SMALL, seed=2)
    ref, mine = ref.to(torch.bfloat16), mine.to(torch.bfloat16)
    assert mine.dtype == torch.bfloat16 and mine.device.type == "cpu"
    _assert_same(ref, mine, _ids(tokenizers))


def test_sd_v1_config_is_bit_identical(tokenizers) -> None:
    """The bundled SD v1 config at full size (both built on meta, same random tensors)."""
    with torch.device("meta"):
        ref = CLIPTextModel(CLIPTextConfig(**SD_TEXT_CONFIG)).eval()
        mine = TextEncoder(SD_TEXT_CONFIG)
    gen = torch.Generator().manual_seed(3)
    weights = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in mine.state_dict().items()}
    mine.load_state_dict(weights, assign=True)
    ref.load_state_dict(weights, assign=True, strict=False)
    ref.embeddings.position_ids = torch.arange(77).expand(1, -1)  # its non-persistent buffer
    _assert_same(ref, mine, _ids(tokenizers)[:2])


def test_meta_build_then_assign_leaves_nothing_on_meta() -> None:
    with torch.device("meta"):
        mine = TextEncoder(SD_TEXT_CONFIG)
    assert mine.device.type == "meta" and not list(mine.buffers())
    weights = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in mine.state_dict().items()}
    mine.load_state_dict(weights, assign=True)
    assert all(t.device.type == "cpu" for t in mine.state_dict().values())
    assert mine.dtype == torch.float16
    assert dict(mine.config)["hidden_size"] == mine.config.hidden_size == 768
    hidden, pooled = mine(torch.zeros(1, 77, dtype=torch.long))
    assert hidden.shape == (1, 77, 768) and pooled.shape == (1, 768)


def test_old_checkpoint_keys_load() -> None:
    """transformers 4's ``text_model.`` prefix and persistent ``position_ids`` still load."""
    ref, _ = _pair(SMALL, seed=4)
    old = {f"text_model.{k}": v for k, v in ref.state_dict().items()}
    old["text_model.embeddings.position_ids"] = torch.arange(77).expand(1, -1)
    mine = TextEncoder(SMALL)
    mine.load_state_dict(old, strict=True)
    assert all(torch.equal(mine.state_dict()[k], v) for k, v in ref.state_dict().items())


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"num_attention_heads": 5}, "not a multiple"),
        ({"eos_token_id": [2, 3]}, "eos_token_id"),
        ({"is_causal": False}, "is_causal"),
    ],
)
def test_unsupported_config_is_refused(change, words) -> None:
    with pytest.raises(ValueError, match=words):
        check_config({**SMALL, **change})
    with pytest.raises(ValueError, match=words), torch.device("meta"):
        TextEncoder({**SMALL, **change})
    TextEncoder({**SMALL, "some_future_key": 1})  # unknown keys are ignored


def test_tokenizer_ids_equal_transformers(tokenizers) -> None:
    ref, mine = tokenizers
    assert mine.model_max_length == ref.model_max_length == 77
    for text in PROMPTS + _random_prompts(300):
        want, got = _engine_call(ref, [text]), _engine_call(mine, [text])
        assert got.dtype == torch.long and torch.equal(want, got), repr(text)
    want, got = _engine_call(ref, PROMPTS), _engine_call(mine, PROMPTS)
    assert got.shape == (len(PROMPTS), 77) and torch.equal(want, got)
    assert got[PROMPTS.index("x" * 300), -1] == mine.eos_token_id  # truncated, EOS last


def test_tokenizer_other_calls_equal_transformers(tokenizers) -> None:
    ref, mine = tokenizers
    for kwargs in ({}, {"padding": True}, {"padding": "longest", "truncation": True}):
        want, got = ref(PROMPTS[:6], **kwargs), mine(PROMPTS[:6], **kwargs)
        assert got.input_ids == want["input_ids"]
        assert got.attention_mask == want["attention_mask"]
    want = ref(PROMPTS[:4], padding="max_length", max_length=12, truncation=True)
    got = mine(PROMPTS[:4], padding="max_length", max_length=12, truncation=True)
    assert got.input_ids == want["input_ids"] and got["attention_mask"] == want["attention_mask"]


TOKEN = {"lstrip": False, "rstrip": False, "single_word": False, "normalized": True}
SD15_STYLE = {  # SD 1.5's tokenizer_config.json: the special tokens as AddedToken dicts
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", **TOKEN},
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", **TOKEN},
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", **TOKEN},
}
DECODER_STYLE = {  # as transformers >= 4.34 saves it: added_tokens_decoder with their flags
    "added_tokens_decoder": {
        "49406": {"content": "<|startoftext|>", "normalized": True, "special": True, **TOKEN},
        "49407": {"content": "<|endoftext|>", "normalized": True, "special": True, **TOKEN},
    }
}


@pytest.mark.parametrize("extra", [SD15_STYLE, DECODER_STYLE], ids=["dicts", "decoder"])
def test_tokenizer_config_variants_equal_transformers(tmp_path, extra) -> None:
    """The tokens' flags decide whether ``<|ENDOFTEXT|>`` in a prompt is the special token."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / name, tmp_path / name)
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **extra}))
    ref = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    mine = ClipTokenizer.from_folder(tmp_path)
    assert torch.equal(_engine_call(ref, PROMPTS), _engine_call(mine, PROMPTS))


def test_tokenizer_refuses_folders_it_cannot_match(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        ClipTokenizer.from_folder(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, tmp_path / name)
    (tmp_path / "added_tokens.json").write_text('{"<cat-toy>": 49408}')
    with pytest.raises(ValueError, match="added_tokens.json"):
        ClipTokenizer.from_folder(tmp_path)
    (tmp_path / "added_tokens.json").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"49408": {"content": "<cat-toy>", "special": False}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cat-toy"):
        ClipTokenizer.from_folder(tmp_path)


def test_building_and_running_imports_neither_library() -> None:
    code = (
        "import sys, json, torch\n"
        "from mlc.engine.nets.unet import UNet\n"
        "from mlc.engine.nets.vae import VAE\n"
        "with torch.device('meta'): UNet({}); VAE({})\n"
        "from mlc.engine.nets.clip import TextEncoder\n"
        "from mlc.engine.nets.tokenizer import ClipTokenizer\n"
        f"tok = ClipTokenizer.from_folder({str(TOKENIZER_DIR)!r})\n"
        "ids = tok(['a cat'], padding='max_length', max_length=77, truncation=True,"
        " return_tensors='pt').input_ids\n"
        "with torch.device('meta'): m = TextEncoder({'hidden_size': 8, 'num_attention_heads': 2,"
        " 'intermediate_size': 8, 'num_hidden_layers': 1})\n"
        "m.load_state_dict({k: torch.zeros(v.shape) for k, v in m.state_dict().items()},"
        " assign=True)\n"
        "m(ids)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('diffusers', 'transformers', 'accelerate', 'scipy') or m == 'torch._dynamo')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
