"""Random-weight models of real architectures, small enough for CPU tests."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 160,
    "max_position_embeddings": 4096,
}


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides) -> PreTrainedModel:
    settings = dict(TINY)
    if model_type == "gpt_neox":
        settings = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vocab_size": 160,
            "max_position_embeddings": 4096,
            "partial_rotary_factor": 0.25,
        }
    elif model_type == "phi":
        settings = {**TINY, "partial_rotary_factor": 0.5}
        settings.pop("num_key_value_heads")
    elif model_type == "gpt2":
        settings = {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 160}
    settings.update(overrides)
    config = AutoConfig.for_model(model_type, **settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model
