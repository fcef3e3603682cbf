"""pie-lsp's engine: models, tokens, KV caches, edits and generation. No LSP here.

Rooms, each importing only the ones below it:

    completion/   documents, prompt layout, decoding, stop rules  (uses model, text, kv)
    model/        loading, corpus, training, evaluation           (uses kv)
    text/         text changes to token edits                     (uses kv)
    kv/           the editable KV cache and token edits           (uses kernels)

The names below are importable from `cache_engine` itself; they load on first use, so that
importing a settings class does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "CompletionEngine": "cache_engine.completion.engine",
    "Completion": "cache_engine.completion.engine",
    "CompletionSettings": "cache_engine.completion.settings",
    "SettingsError": "cache_engine.completion.settings",
    "DocumentStore": "cache_engine.completion.documents",
    "EditableCache": "cache_engine.kv.editable_cache",
    "EditStats": "cache_engine.kv.editable_cache",
    "TokenEdit": "cache_engine.kv.token_edits",
    "IncrementalTokenizer": "cache_engine.text.incremental_tokenizer",
    "TextChange": "cache_engine.text.text_change",
    "DocumentError": "cache_engine.text.text_change",
    "LoadedModel": "cache_engine.model.loading",
    "ModelLoadError": "cache_engine.model.loading",
    "load_model": "cache_engine.model.loading",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'cache_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
