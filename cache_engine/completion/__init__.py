"""Completion: open documents, prompt layout, decoding and stop rules, over the KV cache."""
