"""What the cache engine needs to know about a model's rotary embedding, and which models it refuses.

Re-rotating cached keys by R(Δ) is only valid when a token's rotation depends on its position
alone, with frequencies fixed for the model's lifetime. That holds for the default, linear,
llama3 and yarn RoPE variants. Dynamic NTK and longrope recompute frequencies from the sequence
length, so a cached key's rotation would no longer compose with R(Δ): those are refused, as are
models without rotary embeddings (absolute or ALiBi positions leave nothing to rotate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

COMPOSABLE_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

# Architectures whose attention caches post-RoPE keys through `Cache.update` with the
# rotate_half layout, verified against their transformers 5.23 modeling code.
ROTATE_HALF_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "starcoder2",
        "granite",
        "olmo",
        "olmo2",
        "gpt_neox",
        "phi",
        "phi3",
        "stablelm",
    }
)
# Interleaved (GPT-J style) rotations are supported by the kernels but not wired to these models'
# attention code, so the engine names them rather than guessing.
INTERLEAVED_MODEL_TYPES = frozenset({"gptj", "codegen", "cohere", "cohere2"})


class UnsupportedModelError(ValueError):
    """The model cannot be edited in place with PIE; the message names the model and the reason."""


@dataclass(frozen=True)
class RotarySpec:
    inv_freq: torch.Tensor  # fp32, [rotary_dim // 2], on the model's device
    rotary_dim: int
    head_dim: int
    num_layers: int
    num_kv_heads: int
    interleaved: bool = False
    # Sliding-window models see only this many tokens; the cache refuses to grow past it rather
    # than attend beyond the window the model was trained with.
    attention_window: int | None = None


def _model_label(model: PreTrainedModel) -> str:
    name = getattr(model.config, "_name_or_path", "") or ""
    return f"{model.config.model_type!r}" + (f" ({name})" if name else "")


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    if params and "rope_type" not in params and all(isinstance(v, dict) for v in params.values()):
        # Per-attention-type parameters (e.g. full and sliding layers): all must compose.
        types = {v.get("rope_type", "default") for v in params.values()}
        return {"rope_type": types.pop() if len(types) == 1 else "+".join(sorted(types))}
    return params


def _find_rotary_embedding(model: PreTrainedModel) -> torch.nn.Module | None:
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
            return module
    return None


def rotary_spec(model: PreTrainedModel) -> RotarySpec:
    """Describe the model's RoPE for the shift-and-rotate kernel, or raise UnsupportedModelError."""
    config = model.config
    label = _model_label(model)
    model_type = config.model_type
    if model_type in INTERLEAVED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model {label} uses interleaved (GPT-J style) rotary embeddings, which this engine "
            "does not edit in place yet; use a Llama-family model (Llama, Qwen2, Mistral, "
            "StarCoder2, DeepSeek-Coder)"
        )
    rotary = _find_rotary_embedding(model)
    if rotary is None:
        raise UnsupportedModelError(
            f"model {label} has no rotary position embedding; PIE re-rotates keys by the "
            "position shift, which needs RoPE (absolute or ALiBi positions cannot be shifted)"
        )
    rope_type = _rope_parameters(config).get("rope_type", "default")
    if rope_type not in COMPOSABLE_ROPE_TYPES:
        raise UnsupportedModelError(
            f"model {label} uses rope_type {rope_type!r}, whose frequencies depend on the "
            f"sequence length, so cached keys cannot be re-rotated; supported: "
            f"{', '.join(COMPOSABLE_ROPE_TYPES)}"
        )
    if model_type not in ROTATE_HALF_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model {label} is not an architecture this engine has been checked against; "
            f"supported model types: {', '.join(sorted(ROTATE_HALF_MODEL_TYPES))}"
        )
    window = getattr(config, "sliding_window", None)
    if not getattr(config, "use_sliding_window", True):
        window = None
    inv_freq = rotary.inv_freq.detach().to(torch.float32)
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    return RotarySpec(
        inv_freq=inv_freq,
        rotary_dim=2 * inv_freq.numel(),
        head_dim=head_dim,
        num_layers=config.num_hidden_layers,
        num_kv_heads=num_kv_heads,
        attention_window=window,
    )
