"""Shared fixtures: the shipped tokenizer and small random-weight Llamas built from a config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

    from cache_engine.model.loading import LoadedModel

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO / "cache_engine" / "default_model"

# asyncio_mode = "auto" (pyproject.toml) is required by the pytest-lsp tests.


@pytest.fixture(scope="session")
def default_tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))


def random_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Zero rows of the tied embedding make the special tokens (ids 0-3: end of text and
        # FIM markers) score 0, below the best random logit, so decoding produces text.
        model.model.embed_tokens.weight[:4] = 0
    model.eval()
    return model


@pytest.fixture(scope="session")
def loaded_random_model(default_tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
    """A LoadedModel with the shipped tokenizer (FIM tokens included) and random weights."""
    from cache_engine.model.loading import LoadedModel, find_fim_tokens

    return LoadedModel(
        model=random_llama(len(default_tokenizer)),
        tokenizer=default_tokenizer,
        name="random-llama",
        fim=find_fim_tokens(default_tokenizer),
        eos_token_ids=frozenset({default_tokenizer.eos_token_id}),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(
    tmp_path_factory: pytest.TempPathFactory, default_tokenizer: PreTrainedTokenizerBase
) -> Path:
    """A Hugging Face model folder: random tiny Llama weights and the shipped tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    random_llama(len(default_tokenizer)).save_pretrained(folder)
    default_tokenizer.save_pretrained(folder)
    return folder
