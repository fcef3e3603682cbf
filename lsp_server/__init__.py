"""pie-lsp's language server: protocol glue around `cache_engine.completion`."""
