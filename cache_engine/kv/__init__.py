"""The KV cache of a token sequence and the token-level edits it follows (PIE, prefix, full)."""
