"""pie-lsp's benchmarks."""

import os

# As in the server (lsp_server/__init__.py): set before anything imports torch, so the engine
# decodes here the way it does when serving (kernels/blas_gemv.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
