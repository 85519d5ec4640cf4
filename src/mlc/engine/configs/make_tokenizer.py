"""Build the bundled CLIP tokenizer files from OpenAI's BPE vocabulary.

Usage (once, by a maintainer; the generated files are committed)::

    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/oc
    python src/mlc/engine/configs/make_tokenizer.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

Accepts the wheel or the extracted ``bpe_simple_vocab_16e6.txt.gz`` and writes
``sd-v1/tokenizer/{vocab.json,merges.txt}`` beside this script. The recipe is
OpenAI CLIP's ``SimpleTokenizer``: the 256 byte characters, the same with ``</w>``,
the first 48,894 merges joined, then ``<|startoftext|>`` and ``<|endoftext|>``.
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def read_bpe(source: Path) -> str:
    """The BPE text from a wheel or a ``.txt.gz`` file."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as zf:
            data = zf.read(BPE_MEMBER)
    else:
        data = source.read_bytes()
    return gzip.decompress(data).decode("utf-8")


def build(text: str) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) as transformers' CLIPTokenizer expects them."""
    merges = text.split("\n")[1 : N_MERGES + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(p) for p in pairs]


def main(argv: list[str] | None = None) -> int:
    """Write vocab.json and merges.txt into sd-v1/tokenizer/."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    vocab, merges = build(read_bpe(Path(args[0])))
    out = Path(__file__).resolve().parent / "sd-v1" / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
