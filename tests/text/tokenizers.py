"""Three tokenizers for the text tests: the shipped default (GPT-2 regex, byte-level), a
byte-level one with Qwen2.5's pre-tokenizer regex (digits split one by one, punctuation swallowing
newlines, a newline rule of its own), and a SentencePiece-style one (a space prepended to the
text, no pre-tokenizer so BPE runs over the whole text, byte fallback, a decoder that strips the
first space). The last two are trained here on standard-library modules that the tests never edit.
"""

from __future__ import annotations

import json
import sysconfig
from functools import cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from cache_engine.text.incremental_tokenizer import IncrementalTokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DEFAULT_TOKENIZER = Path(__file__).parents[2] / "cache_engine" / "default_model" / "tokenizer.json"
SPECIAL = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _corpus() -> list[str]:
    texts = [(STDLIB / name).read_text() for name in ("string.py", "glob.py", "fnmatch.py")]
    texts.append("\u00e9 \u00fc \u4e2d\u6587 \u2014 \U0001f600 \t\t\r\n 0123456789 <|endoftext|>")
    return texts


def qwen_style() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _sentencepiece_style() -> Tokenizer:
    # Trained on words so that merges stay plausible, then used like Llama's tokenizer.json:
    # no pre-tokenizer, so BPE sees the whole text as one word.
    trainee = Tokenizer(models.BPE())
    trainee.normalizer = normalizers.Replace(" ", "\u2581")
    trainee.pre_tokenizer = pre_tokenizers.Split(
        Regex("\u2581*[^\u2581\\s]+|\u2581+|\\s"), behavior="isolated"
    )
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIAL, show_progress=False)
    trainee.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(trainee.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(SPECIAL)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tokenizer


@cache
def tokenizer_named(name: str) -> Tokenizer:
    if name == "default":
        return Tokenizer.from_file(str(DEFAULT_TOKENIZER))
    return qwen_style() if name == "qwen_style" else _sentencepiece_style()


@cache
def incremental_tokenizer(name: str) -> IncrementalTokenizer:
    return IncrementalTokenizer(tokenizer_named(name))
