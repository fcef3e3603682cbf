"""Load the shipped default model, a local Hugging Face model folder, or a hub id when online.

Repository code never runs (`trust_remote_code` stays off) and weights are read from safetensors
unless the user opts in to pickle checkpoints, which can execute code when unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from cache_engine.kv.llama_step import LEAN_MODEL_TYPES, store_weights_transposed
from cache_engine.kv.rotary import UnsupportedModelError, rotary_spec
from cache_engine.model.cpu_threading import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME
from cache_engine.model.huge_pages import store_weights_in_huge_pages
from cache_engine.model.quantization import quantize_int8_dynamic, quantize_int8_weight_only
from kernels.blas_linear import blas_products_usable

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """The model could not be loaded; the message names the path or id and the reason."""


@dataclass(frozen=True)
class FimTokens:
    """Fill-in-the-middle special tokens, used in prefix-suffix-middle order."""

    prefix: str
    suffix: str
    middle: str


# Known FIM vocabularies: (prefix, suffix, middle) in PSM order.
_FIM_VOCABULARIES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # pie-lsp default, Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, StarCoder2
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),  # CodeLlama
)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

_CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Weight quantizations `load_model(quantize=...)` offers (cache_engine/model/quantization.py).
Quantization = Literal["int8", "int8-dynamic"]
_QUANTIZATIONS: tuple[Quantization, ...] = ("int8", "int8-dynamic")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fim: FimTokens | None
    eos_token_ids: frozenset[int]
    device: torch.device
    dtype: torch.dtype
    quantization: Quantization | None = None


def find_fim_tokens(tokenizer: PreTrainedTokenizerBase) -> FimTokens | None:
    vocab = tokenizer.get_vocab()
    for prefix, suffix, middle in _FIM_VOCABULARIES:
        if prefix in vocab and suffix in vocab and middle in vocab:
            return FimTokens(prefix, suffix, middle)
    return None


def model_folder(name_or_path: str) -> Path:
    """The local folder a `--model` argument names: the shipped model's for "default", else the
    path with `~` expanded. Raises ModelLoadError when that folder does not exist, so that a
    tool writing results beside a model never writes them beside another one."""
    if name_or_path == DEFAULT_MODEL_NAME:
        return DEFAULT_MODEL_DIR
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model folder {name_or_path!r} does not exist")
    return path


def _resolve_source(name_or_path: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder)."""
    if name_or_path == DEFAULT_MODEL_NAME:
        if not (DEFAULT_MODEL_DIR / "model.safetensors").exists():
            raise ModelLoadError(
                f"the default model is missing from {DEFAULT_MODEL_DIR}: "
                "reinstall pie-lsp or train it with `python -m cache_engine.model.training`"
            )
        return str(DEFAULT_MODEL_DIR), True
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {name_or_path!r} is a file; pass the model folder")
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"model folder {name_or_path!r} has no config.json: not a Hugging Face model folder"
            )
        return str(path), True
    if not _HUB_ID.fullmatch(name_or_path):
        raise ModelLoadError(f"model folder {name_or_path!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"model {name_or_path!r} is not a local folder and HF_HUB_OFFLINE is set, so it "
            "cannot be downloaded; pass the path of a downloaded model folder"
        )
    return name_or_path, False


def _check_weights_format(source: str, local: bool, allow_pickle: bool) -> None:
    if not local or allow_pickle:
        return
    folder = Path(source)
    has_safetensors = any(folder.glob("*.safetensors"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth"))
    if not has_safetensors and has_pickle:
        raise ModelLoadError(
            f"model folder {source!r} has only pickle weights (.bin/.pt); loading them can run "
            "arbitrary code. Convert them to safetensors, or pass --allow-pickle if you trust "
            "the files"
        )
    if not has_safetensors:
        raise ModelLoadError(f"model folder {source!r} has no weights (*.safetensors)")


def default_decode_layout(model_type: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `load_model` stores the weights transposed when not told: for float32 on CPU,
    unless the lean step multiplies them through BLAS, which reads them fastest as loaded (only
    the lean step does; other architectures keep MKL's layout)."""
    blas = blas_products_usable() and model_type in LEAN_MODEL_TYPES
    return device.type == "cpu" and dtype == torch.float32 and not blas


def load_model(
    name_or_path: str = DEFAULT_MODEL_NAME,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    allow_pickle: bool = False,
    decode_layout: bool | None = None,
    quantize: Quantization | None = None,
    huge_pages: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, and check that its cache can be edited with PIE.

    `decode_layout` stores each weight matrix transposed in memory (`store_weights_transposed`):
    MKL streams it faster in one-token products. None: for float32 weights on CPU unless the
    decode step multiplies through numpy's BLAS (`blas_products_usable`), which reads the layout
    as loaded fastest (`benchmarks/bench_decode.py`: MKL decodes 1.3x faster on the default
    model transposed, 1.5x on the 0.5B shape; bf16 products ran slower that way).
    `quantize="int8"` stores the linear layers' weights, lm_head included, as int8 with one
    scale per output channel (`quantize_int8_weight_only`); `dtype` is then the activations'
    and the remaining weights' (embedding, norms) dtype. `quantize="int8-dynamic"` also rounds
    each product's inputs to int8 by blocks of 32 (`quantize_int8_dynamic`), which the compiled
    CPU step multiplies in integers.
    `huge_pages` moves the weights of a model on CPU into transparent huge pages where Linux
    offers them (`store_weights_in_huge_pages`: a CPU decode step streams them about 6 % faster).
    """
    source, local = _resolve_source(name_or_path)
    if dtype is not None and dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    if quantize is not None and quantize not in _QUANTIZATIONS:
        raise ModelLoadError(
            f"unknown quantize {quantize!r}; choose one of {', '.join(_QUANTIZATIONS)} "
            "or None for floating-point weights"
        )
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise ModelLoadError(f"unknown device {device!r}: {error}") from error
    torch_dtype = _DTYPES[dtype] if dtype else torch.float32
    _check_weights_format(source, local, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"cannot read the config of model {name_or_path!r}: {error}"
        ) from error
    architectures = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False) or (
        architectures and not any(a.endswith(_CAUSAL_LM_SUFFIXES) for a in architectures)
    ):
        raise ModelLoadError(
            f"model {name_or_path!r} ({', '.join(architectures) or config.model_type}) is not a "
            "causal language model"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            trust_remote_code=False,
            use_safetensors=None if allow_pickle else True,
            dtype=torch_dtype,
        )
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise ModelLoadError(
                f"model {name_or_path!r} (model_type {config.model_type!r}) is not a causal "
                "language model"
            ) from error
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {error}") from error
    except OSError as error:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {error}") from error
    try:
        rotary_spec(model)
    except UnsupportedModelError as error:
        raise ModelLoadError(str(error)) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {name_or_path!r}: {error}") from error
    model.to(torch_device)
    model.eval()
    if quantize == "int8":
        # Before decode_layout, which then re-lays only the weights left in floating point.
        quantize_int8_weight_only(model)
    elif quantize == "int8-dynamic":
        quantize_int8_dynamic(model)
    if decode_layout is None:
        decode_layout = default_decode_layout(config.model_type, torch_device, torch_dtype)
    if decode_layout:
        store_weights_transposed(model)
    if huge_pages and torch_device.type == "cpu":
        # Last: the layout and the quantization above each allocate anew.
        store_weights_in_huge_pages(model)
    fim = find_fim_tokens(tokenizer)
    if fim is None:
        log.info("model %s has no fill-in-the-middle tokens: FIM is off", name_or_path)
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name_or_path,
        fim=fim,
        eos_token_ids=frozenset(eos_ids),
        device=torch_device,
        dtype=torch_dtype,
        quantization=quantize,
    )
