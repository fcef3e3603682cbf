"""pie-lsp's benchmarks."""
