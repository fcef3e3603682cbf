"""Products x·Wᵀ (+ b) of several rows through oneDNN, for prefill, edits and verify passes on CPU.

torch's CPU build sends float32 `F.linear` to MKL, whose sgemm on this project's AMD EPYC runs at
about half the speed of oneDNN's for most row counts, which torch also ships and which picks its kernels by
instruction set rather than by vendor. `python -m benchmarks.bench_products` under the server's
environment for a streamed model (`OMP_WAIT_POLICY=PASSIVE OPENBLAS_THREAD_TIMEOUT=4`,
benchmarks/results/products_passive.json; 4 layers of the 0.5B shape, 2 threads, ms): 13 rows,
an edit's pass, oneDNN 11.4, OpenBLAS 23.8, MKL 24.5; 512 rows 154, 249, 290; 2,048 rows 604,
1,032, 1,203. For one row, a decode step's matrix-vector product, numpy's OpenBLAS reads the
weights fastest (6.7 ms against oneDNN's 7.5 and MKL's 13.2; kernels/blas_linear.py). oneDNN
runs on torch's own OpenMP workers, so it needs no wait policy of its own.

The entry point is torch's `mkldnn::_linear_pointwise`, the fused linear that torch's compiler
emits for CPU, called on the plain (dense) weight, which is not repacked (a non-contiguous x is
copied first). It is an internal operator, so `onednn_linear_usable` checks once that it exists
and agrees with `torch.nn.functional.linear`, the reference (tests/kernels/test_onednn_linear.py
compares the two), and callers fall back to `F.linear` where it does not.

Training goes through it too (`route_linears_through_onednn`): forward and both gradients are
oneDNN products, except under autocast, which the products would bypass.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kernels.blas_linear import check_cpu_float32_product


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [n, in] · weight [out, in]ᵀ + bias [out] → [n, out], float32 CPU tensors; weight may be
    stored in either order. Raises ValueError, naming the bad tensor, for anything else."""
    check_cpu_float32_product("onednn_linear", x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


@functools.cache
def onednn_linear_usable() -> bool:
    """Whether this torch build has the operator and it computes what F.linear does."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(5, 24, generator=generator)
        weight = torch.randn(40, 24, generator=generator)
        bias = torch.randn(40, generator=generator)
        with torch.inference_mode():
            out = onednn_linear(x, weight, bias)
    except (AttributeError, RuntimeError):
        return False
    return torch.allclose(out, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)


class _OneDNNLinear(torch.autograd.Function):
    """F.linear whose forward and input/weight gradients are oneDNN products, for training."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        out = onednn_linear(rows, weight, bias)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, weight.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # dL/dx = g · W: a product by Wᵀ, whose [in, out] view oneDNN reads as stored.
            grad_x = onednn_linear(grad_rows, weight.t(), None).view(*grad.shape[:-1], -1)
        if ctx.needs_input_grad[1]:
            # dL/dW = gᵀ · x.
            grad_w = onednn_linear(grad_rows.t(), rows.t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(0)
        return grad_x, grad_w, grad_b


def onednn_linear_trainable(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """F.linear for x [..., in] through oneDNN in the forward and backward passes; float32
    CPU tensors outside autocast (anything else goes through F.linear, which autocast casts)."""
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.device.type != "cpu"
        or torch.is_autocast_enabled("cpu")
    ):
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias)


class OneDNNLinear(torch.nn.Linear):
    """An nn.Linear whose products run through oneDNN (`route_linears_through_onednn`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear_trainable(x, self.weight, self.bias)


def route_linears_through_onednn(model: torch.nn.Module) -> int:
    """Make every nn.Linear of `model` an `OneDNNLinear` in place (same parameters, state dict
    and outputs); returns how many. Nothing changes where `onednn_linear_usable()` is False."""
    if not onednn_linear_usable():
        return 0
    routed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = OneDNNLinear
            routed += 1
    return routed
