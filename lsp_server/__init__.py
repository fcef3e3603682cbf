"""pie-lsp's language server: protocol glue around `cache_engine.completion`."""

import os

# torch's OpenMP workers sleep between parallel regions instead of spinning, so the BLAS threads
# of the one-token decode products get the cores (kernels/blas_gemv.py). libgomp reads this when
# torch loads, and both entry points import this package before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
