"""pie-lsp's tests."""
