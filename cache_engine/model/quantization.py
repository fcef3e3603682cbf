"""Int8 weight-only quantization of a loaded model's linear layers (gpt-fast style).

Each `nn.Linear` becomes an `Int8WeightOnlyLinear`: int8 weights with one symmetric scale per
output channel (w ≈ q · s, q in −127..127), activations left in floating point. A decode step
reads every weight once, so a quarter of fp32's bytes is what makes it faster
(`benchmarks/bench_precision.py`); the products themselves stay in floating point.

On CPU the product is `torch.ops.aten._weight_int8pack_mm` (what gpt-fast uses there). In torch
2.13 it takes fp32, fp16 and bf16 activations with scales of the same dtype, but only bf16 is
vectorized: with fp32 activations a one-token product ran 5-25x slower than the fp32 matmul it
replaces (measured, 2 threads, AMD EPYC). So the kernel always runs in bf16 (an fp32 model's
activations are rounded to bf16 for it and its output cast back), and the scales are kept in
bf16 with the int8 values rounded against those bf16 scales, so q · s is exactly what was
quantized. The kernel also needs in_features a multiple of 16 (others give NaNs or crash it);
layers that do not fit, and any other device, dequantize then multiply.

The lm_head is quantized too by default: it is the largest single matrix a decode step reads
(18 % of the default model's bytes, 28 % of Qwen2.5-Coder-0.5B's) and a per-vocabulary-row scale
suits it. A tied embedding is untied for that: the input embedding stays in floating point (a
step reads one row of it), the lm_head gets its own int8 copy. The model is then for inference:
saving it or re-tying its weights is not supported.

`quantize_int8_dynamic` also quantizes the activations: each product's input rows are rounded to
int8 by blocks of ACTIVATION_BLOCK values with one float scale each, as each product starts
(llama.cpp's Q8_0 activation blocks), so that the compiled C pass (kernels/llama_decode_cpu.c)
sums int8 products in integers instead of widening every weight to float32 first. That costs
accuracy (what `benchmarks/bench_precision.py` measures as agreement with fp32 greedy output)
and buys a step that reads int8 weights at memory speed. Layers whose in_features is not a
multiple of the block, and the lm_head, keep float activations (`Int8WeightOnlyLinear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The CPU kernel's only vectorized activation dtype (see the module doc).
KERNEL_DTYPE = torch.bfloat16
# The CPU kernel reads in_features in blocks of this many values.
KERNEL_BLOCK = 16
# Activations quantized by `Int8DynamicLinear` share one scale per this many values
# (ACTIVATION_BLOCK in kernels/llama_decode_cpu.c).
ACTIVATION_BLOCK = 32


def quantize_activation_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [..., n], scales float32 [..., n / ACTIVATION_BLOCK]) with x ≈ q · scale per
    block: scale = max|x| / 127 over the block, q = x · (1 / scale) rounded to nearest, ties to
    even (0 for an all-zero block). The C pass quantizes with the same operations, so both give
    the same q."""
    n = x.shape[-1]
    if n % ACTIVATION_BLOCK:
        raise ValueError(f"{n} values do not split into blocks of {ACTIVATION_BLOCK}")
    blocks = x.float().reshape(*x.shape[:-1], n // ACTIVATION_BLOCK, ACTIVATION_BLOCK)
    scales = blocks.abs().amax(dim=-1) / 127
    inverse = torch.where(scales > 0, 1 / scales, torch.zeros_like(scales))
    q = (blocks * inverse[..., None]).round().clamp(-127, 127).to(torch.int8)
    return q.reshape(x.shape), scales


def dequantize_activation_blocks(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """q · scale, float32, in q's shape."""
    blocks = q.float().reshape(*q.shape[:-1], -1, ACTIVATION_BLOCK)
    return (blocks * scales[..., None]).reshape(q.shape)


class Int8WeightOnlyLinear(nn.Module):
    """y = x · (q · s)ᵀ + b with q int8 [out, in] and s one bf16 scale per output channel."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self._kernel_fits = self.in_features % KERNEL_BLOCK == 0

    @classmethod
    @torch.no_grad()
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8WeightOnlyLinear:
        """Quantize a floating-point [out, in] weight, per output channel, symmetric."""
        weight = weight.detach().float()
        # An all-zero row would divide by zero; any positive scale represents it exactly.
        largest = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
        scales = (largest / 127).to(KERNEL_DTYPE)
        # Rounding the scale to bf16 can lower it a little: clamp so the largest value stays
        # in range (at most half a step of extra error, on that one value).
        quantized = (weight / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        return cls(quantized.contiguous(), scales, None if bias is None else bias.detach().clone())

    def dequantized_weight(self) -> torch.Tensor:
        """q · s as fp32 [out, in]: the weight this layer multiplies by."""
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self._kernel_fits:
            flat = x.reshape(-1, self.in_features).to(KERNEL_DTYPE).contiguous()
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
            out = out.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            # Per-output-channel scales commute with the product: scale the (smaller) output.
            out = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)  # the output keeps the activations' dtype
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Int8DynamicLinear(Int8WeightOnlyLinear):
    """y = x̂ · (q · s)ᵀ + b, where x̂ is x rounded to int8 by blocks of ACTIVATION_BLOCK
    (`quantize_activation_blocks`) as each product starts. This torch forward multiplies the
    dequantized x̂ in float32: the reference for the C pass's integer sums, and what passes too
    long for the C pass (prefill) run."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        if weight.shape[1] % ACTIVATION_BLOCK:
            raise ValueError(
                f"in_features {weight.shape[1]} is not a multiple of the activation block "
                f"{ACTIVATION_BLOCK}"
            )
        super().__init__(weight, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rounded = dequantize_activation_blocks(*quantize_activation_blocks(x))
        out = F.linear(rounded, self.weight.float()) * self.scales.float()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype)


@torch.no_grad()
def quantize_int8_weight_only(model: nn.Module, *, include_lm_head: bool = True) -> int:
    """Replace every plain `nn.Linear` of `model` in place by an `Int8WeightOnlyLinear`;
    returns how many were replaced. `include_lm_head=False` keeps the output projection (and a
    tied embedding) as it is."""
    return _replace_linears(model, include_lm_head, dynamic_activations=False)


@torch.no_grad()
def quantize_int8_dynamic(model: nn.Module, *, include_lm_head: bool = True) -> int:
    """As `quantize_int8_weight_only`, with int8 activations too (`Int8DynamicLinear`) where
    in_features is a multiple of ACTIVATION_BLOCK, except for the lm_head (float activations
    there and elsewhere)."""
    return _replace_linears(model, include_lm_head, dynamic_activations=True)


def _replace_linears(model: nn.Module, include_lm_head: bool, dynamic_activations: bool) -> int:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [
        (name, module)
        for name, module in model.named_modules()
        # Exact type: a subclass or an adapter wrapper may compute something else.
        if type(module) is nn.Linear and (include_lm_head or module is not output)
    ]
    for name, module in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        # The lm_head keeps float inputs: its logits pick the token, and rounding the final
        # hidden state moved near-ties (default model, 40 held-out places: greedy continuations
        # identical to fp32's 45 % with it rounded, 62.5 % without; weight-only int8 65 %).
        kind = (
            Int8DynamicLinear
            if dynamic_activations
            and module.in_features % ACTIVATION_BLOCK == 0
            and module is not output
            else Int8WeightOnlyLinear
        )
        # A tied lm_head's weight is the embedding's: from_float copies it, which unties them.
        setattr(parent, child_name, kind.from_float(module.weight, module.bias))
    return len(targets)
