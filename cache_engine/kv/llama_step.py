"""A Llama-family forward pass of our own, over a loaded transformers model's weights and the slab.

The transformers forward pays for generality on every call: kwargs plumbing, a mask builder, a
rotary module, a Cache object per layer; a decode step of a small model is largely that overhead
(gpt-fast's observation). This pass does only the arithmetic: RoPE on q and k together from a
table built once (a slice per step), K/V written straight into the slab at slots slot..slot+n,
and one attention call per layer over slots 0..slot+n. Grouped-query heads share their K/V head
without a copy: for one token the group's query heads are laid along SDPA's query axis (and
need no mask); for up to 64 tokens (edits, verify passes) a K/V head's query heads and tokens
form one matrix for two batched products (`_grouped_attention`); longer passes take SDPA's
flash kernel with `enable_gqa` (torch >= 2.5).

What bounds a CPU decode step is reading the weights (and, at 2k tokens, the K/V), not Python.
On CPU (float32, bfloat16 or int8 weights) a pass of up to `COMPILED_MAX_ROWS` tokens (a decode
step, a verify pass, a short edit) is one call into the compiled C pass where it can be built
(kernels/llama_decode_cpu.py: 1.8x this module's torch step on the default model for one token,
1.2x on the 0.5B shape); this module's torch arithmetic stays its reference and runs everything
else. In torch (`Products`): passes of several rows (prefill, long edits) multiply
through oneDNN (kernels/onednn_linear.py: about twice MKL's speed here); one-row products go
through numpy's BLAS where it is usable (kernels/blas_linear.py: OpenBLAS streams the weights
at memory speed, torch's MKL GEMV at about half), otherwise through MKL, which
`store_weights_transposed` helps.
Measured and left out (CPU, default model): fusing q/k/v and gate/up into one matrix each made
no difference beyond noise and copies the weights; `torch.compile` of the layers (inductor,
dynamic shapes) took 77 s to compile, 48 s more for a 3-token verify, and ran ~8x slower.

Keys are stored already rotated at their position (the convention PIE relies on, see rotary.py),
and a token's position is its slot, as in `EditableCache._forward`. Sliding windows need no mask
here because the cache never grows past the window (`RotarySpec.attention_window`).

Supported: llama, mistral, qwen2 (q/k/v biases), qwen3 (per-head q/k RMSNorm). Anything else, or
a variant of them this pass does not reproduce, raises `UnsupportedStepError` naming the model,
and the cache keeps the transformers forward. Projections are plain `nn.Linear` weights, or
`Int8WeightOnlyLinear` modules (cache_engine/model/quantization.py), which are called instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from cache_engine.kv.rotary import rotary_spec
from cache_engine.model.quantization import (
    ACTIVATION_BLOCK,
    Int8DynamicLinear,
    Int8WeightOnlyLinear,
)
from kernels.blas_linear import blas_linear, blas_products_usable
from kernels.llama_decode_cpu import (
    BoundPass,
    CompiledForward,
    CompiledStepUnavailable,
    LayerTensors,
    WeightProjection,
)
from kernels.onednn_linear import onednn_linear, onednn_linear_usable

LEAN_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Passes of more rows multiply with torch even where BLAS products are on: OpenBLAS's sgemm wins
# up to here and loses on a 2,048-token prefill chunk (0.5B shape, 2 threads: 512 rows 2.03 s
# against MKL's 2.22, 2,048 rows 10.6 s against 9.8).
BLAS_MAX_ROWS = 512
# Passes of at least this many rows multiply through oneDNN where it is on: it is about twice
# as fast as MKL and OpenBLAS for several rows (kernels/onednn_linear.py); one row, a decode
# step, streams fastest through OpenBLAS or MKL.
ONEDNN_MIN_ROWS = 2
# Passes of up to this many tokens run in the compiled C pass where it builds: it reads each
# weight once for all of them, where torch's GEMMs pack the weights first (decode steps, verify
# passes, a deletion's re-fed token, short edits and refreshes). Against the torch step, from a
# 2k cache with 2 threads: 0.64x its time for 4-9 tokens and 0.95x for 32 on the 0.5B shape,
# 0.3x for 2-16 and 0.88x for 32 on the default model; even at 64 (/tmp probe, see
# kernels/llama_decode_cpu.py).
COMPILED_MAX_ROWS = 32
# With bfloat16 weights longer passes (prefill, refreshes, long edits) also run in the C pass,
# COMPILED_MAX_ROWS tokens at a time: torch's bfloat16 products are slow on CPUs without
# avx512_bf16. Default model, 512 tokens after 1,024, 2 threads, AVX2 (/tmp probe): torch bf16
# 821-918 ms, the C pass in 32-token passes 381-511 ms; int8 was even (388-424 against
# 369-471) and float32 faster in torch (305-356 against 410-658), so those keep torch.
CHUNKED_DTYPES = (torch.bfloat16,)
# Passes of up to this many tokens attend through two batched products (`_grouped_attention`);
# longer ones through SDPA's flash kernel, which does not hold a [queries, slots] score matrix.
GROUPED_ATTENTION_MAX_ROWS = 64


class UnsupportedStepError(ValueError):
    """The lean step cannot reproduce this model's forward; the message names the model."""


# A plain projection's (weight, bias), multiplied here; an int8 one is called (it has no plain
# weight to multiply by, see cache_engine/model/quantization.py).
Projection = tuple[torch.Tensor, torch.Tensor | None] | Int8WeightOnlyLinear


@dataclass(frozen=True)
class Products:
    """Which library multiplies a pass's rows by a plain projection: oneDNN for passes of
    `ONEDNN_MIN_ROWS` rows or more (`onednn`), numpy's BLAS up to `BLAS_MAX_ROWS` (`blas`),
    torch's `F.linear` otherwise. An int8 projection multiplies itself."""

    blas: bool = False
    onednn: bool = False

    def __call__(self, x: torch.Tensor, projection: Projection) -> torch.Tensor:
        if isinstance(projection, Int8WeightOnlyLinear):
            return projection(x)
        rows = x.shape[0]
        if self.onednn and rows >= ONEDNN_MIN_ROWS:
            return onednn_linear(x, *projection)
        if self.blas and rows <= BLAS_MAX_ROWS:
            return blas_linear(x, *projection)
        return F.linear(x, *projection)


TORCH_PRODUCTS = Products()


@dataclass(frozen=True)
class _LayerWeights:
    input_norm: torch.Tensor
    q: Projection
    k: Projection
    v: Projection
    q_norm: torch.Tensor | None  # qwen3: RMSNorm over each head, before RoPE
    k_norm: torch.Tensor | None
    o: Projection
    post_attention_norm: torch.Tensor
    gate: Projection
    up: Projection
    down: Projection


def _label(model: PreTrainedModel) -> str:
    name = getattr(model.config, "_name_or_path", "") or ""
    return f"{model.config.model_type!r}" + (f" ({name})" if name else "")


def _weight_projection(projection: Projection) -> WeightProjection:
    """The tensors of a projection as the compiled pass takes them."""
    if isinstance(projection, Int8DynamicLinear):
        return projection.weight, projection.bias, projection.scales, ACTIVATION_BLOCK
    if isinstance(projection, Int8WeightOnlyLinear):
        return projection.weight, projection.bias, projection.scales
    return projection


def _projection_tensors(projection: Projection) -> list[torch.Tensor]:
    """The tensors a projection's products read: weight, bias where there is one, scales."""
    return [t for t in _weight_projection(projection) if isinstance(t, torch.Tensor)]


def _linear_weights(module: torch.nn.Module, what: str, label: str) -> Projection:
    if isinstance(module, Int8WeightOnlyLinear):
        return module
    # Another quantized or an adapter-wrapped projection: its arithmetic is not known here.
    if type(module) is not torch.nn.Linear:
        raise UnsupportedStepError(
            f"model {label}: {what} is a {type(module).__name__}, not a torch.nn.Linear or an "
            "Int8WeightOnlyLinear; the lean step multiplies plain or int8 weights"
        )
    return module.weight, None if module.bias is None else module.bias


@torch.no_grad()
def store_weights_transposed(model: PreTrainedModel) -> int:
    """Re-lay every 2-D weight of `model` in memory as its transpose; returns the bytes moved.

    Shapes and values stay the same (an [out, in] parameter over [in, out] storage), so every
    forward, saving and loading work as before. What changes is a one-token x·Wᵀ: with W stored
    [in, out] the BLAS streams it, while on row-major W its one-row GEMM and GEMV read at about
    half the memory bandwidth (MKL on AMD EPYC, measured: 12 GB/s against 25 for a plain sum;
    transposed 20). Decoding is that product, weight-bandwidth bound, so this is opt-in at load
    time for serving: it mutates the model, and a tied embedding's row lookup becomes strided.
    """
    moved = 0
    for parameter in model.parameters():
        if parameter.dim() == 2 and parameter.is_contiguous():
            parameter.data = parameter.data.t().contiguous().t()
            moved += parameter.nbytes
    return moved


class LlamaStep:
    """Runs token ids through the model at slots slot.. of a [layers, kv_heads, capacity,
    head_dim] K/V slab, writing their keys and values there; returns logits.

    It holds the model's Parameter objects, not copies or detached views, so it multiplies by
    the weights as they are now: after an optimizer step or a `store_weights_transposed`.

    `blas_products`: the products through numpy's BLAS (kernels/blas_linear.py); None uses it
    for float32 weights on CPU where `blas_products_usable()`. `onednn_products`: passes of
    several rows through oneDNN (kernels/onednn_linear.py); None uses it for float32 weights on
    CPU where `onednn_linear_usable()`. `compiled_step`: passes of up to `COMPILED_MAX_ROWS`
    tokens through the compiled C pass (kernels/llama_decode_cpu.py); None uses it where it can
    be built and reproduces this model (float32, bfloat16 or int8 weights on CPU, no per-head
    norms; it computes in float32 where torch's bfloat16 step and int8 kernel round activations)
    unless the environment sets `PIE_LSP_COMPILED_STEP=0`; True raises UnsupportedStepError
    where it cannot. Why it is off is in `compiled_step_off`."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        blas_products: bool | None = None,
        onednn_products: bool | None = None,
        compiled_step: bool | None = None,
    ):
        config = model.config
        label = _label(model)
        if config.model_type not in LEAN_MODEL_TYPES:
            raise UnsupportedStepError(
                f"model {label}: the lean step supports model types "
                f"{', '.join(sorted(LEAN_MODEL_TYPES))}, not {config.model_type!r}"
            )
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnsupportedStepError(
                f"model {label}: hidden_act {config.hidden_act!r}, the lean step has SiLU only"
            )
        spec = rotary_spec(model)
        if spec.rotary_dim != spec.head_dim:
            raise UnsupportedStepError(
                f"model {label}: partial rotary ({spec.rotary_dim} of {spec.head_dim} dims)"
            )
        decoder = model.get_decoder()
        rotary = decoder.rotary_emb
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim
        self.eps = config.rms_norm_eps
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        cpu_float32 = self.device.type == "cpu" and self.dtype == torch.float32
        for name, asked in (("blas_products", blas_products), ("onednn_products", onednn_products)):
            if asked and not cpu_float32:
                raise UnsupportedStepError(
                    f"model {label}: {name} multiplies float32 weights on CPU, not {self.dtype} "
                    f"on {self.device}"
                )
        self.blas_products = (
            cpu_float32 and blas_products_usable() if blas_products is None else blas_products
        )
        self.onednn_products = (
            cpu_float32 and onednn_linear_usable() if onednn_products is None else onednn_products
        )
        self.products = Products(blas=self.blas_products, onednn=self.onednn_products)
        # yarn scales cos and sin; the others use 1.
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self.inv_freq = spec.inv_freq.to(self.device)
        self.embed = decoder.embed_tokens.weight
        self.final_norm = decoder.norm.weight
        self.lm_head = _linear_weights(model.get_output_embeddings(), "lm_head", label)
        self.layers = [self._layer_weights(layer, label) for layer in decoder.layers]
        # (cos, [-sin, sin]) for every position up to its length, grown on demand and swapped
        # whole: a step slices it instead of computing the rotation.
        # Kept in float32, which the compiled pass rotates in, and in the model's dtype.
        empty = torch.empty(0, 1, self.head_dim, device=self.device)
        self._rotary_tables = {torch.float32: (empty, empty)}
        self.compiled_step_off: str | None = None
        self._compiled: CompiledForward | None = None
        self._compiled_weights: tuple[int, ...] = ()
        self._weights: list[torch.Tensor] = []
        if compiled_step is None and os.environ.get("PIE_LSP_COMPILED_STEP") == "0":
            self.compiled_step_off = "PIE_LSP_COMPILED_STEP=0"
        elif compiled_step is False:
            self.compiled_step_off = "compiled_step=False"
        else:
            try:
                self._compiled_step()
            except CompiledStepUnavailable as error:
                if compiled_step:
                    raise UnsupportedStepError(f"model {label}: {error}") from error
                self.compiled_step_off = str(error)

    def _projections(self) -> list[Projection]:
        """lm_head, then every layer's seven projections, as `_linear_weights` holds them."""
        return [self.lm_head] + [
            p for w in self.layers for p in (w.q, w.k, w.v, w.o, w.gate, w.up, w.down)
        ]

    def _weight_tensors(self) -> list[torch.Tensor]:
        tensors = [self.embed, self.final_norm]
        tensors += [n for w in self.layers for n in (w.input_norm, w.post_attention_norm)]
        for projection in self._projections():
            tensors += _projection_tensors(projection)
        return tensors

    def _compiled_step(self) -> CompiledForward:
        """The compiled step over the weights' current storage, rebuilt when it moved (a
        `store_weights_transposed`, new `.data`)."""
        if not self._weights:
            # The Parameter objects stay; what they hold may change.
            self._weights = self._weight_tensors()
        weights = tuple(map(torch.Tensor.data_ptr, self._weights))
        if self._compiled is None or weights != self._compiled_weights:
            if any(w.q_norm is not None for w in self.layers):
                raise CompiledStepUnavailable("the compiled step has no per-head q/k norms")
            self._compiled = CompiledForward(
                embed=self.embed,
                layers=[
                    LayerTensors(
                        w.input_norm,
                        *map(_weight_projection, (w.q, w.k, w.v, w.o)),
                        w.post_attention_norm,
                        *map(_weight_projection, (w.gate, w.up, w.down)),
                    )
                    for w in self.layers
                ],
                final_norm=self.final_norm,
                lm_head=_weight_projection(self.lm_head),
                num_heads=self.num_heads,
                num_kv_heads=self.num_kv_heads,
                head_dim=self.head_dim,
                eps=self.eps,
            )
            self._compiled_weights = weights
        return self._compiled

    def bound_pass(self, keys: torch.Tensor, values: torch.Tensor) -> BoundPass | None:
        """The compiled pass bound to this slab (see `CompiledForward.bind`), for passes of up to
        COMPILED_MAX_ROWS tokens at adjacent slots; None where the compiled step is off. It
        reads the weights where they are now: bind again after they move, or after the slab
        grows."""
        if self.compiled_step_off is not None:
            return None
        try:
            compiled = self._compiled_step()
        except CompiledStepUnavailable as error:
            self.compiled_step_off = str(error)
            return None
        cos, signed_sin = self._rotary_rows(0, keys.shape[2], torch.float32)
        return compiled.bind(keys, values, cos, signed_sin, torch.get_num_threads())

    def _layer_weights(self, layer: torch.nn.Module, label: str) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        q_norm = getattr(attn, "q_norm", None)
        k_norm = getattr(attn, "k_norm", None)
        return _LayerWeights(
            input_norm=layer.input_layernorm.weight,
            q=_linear_weights(attn.q_proj, "q_proj", label),
            k=_linear_weights(attn.k_proj, "k_proj", label),
            v=_linear_weights(attn.v_proj, "v_proj", label),
            q_norm=None if q_norm is None else q_norm.weight,
            k_norm=None if k_norm is None else k_norm.weight,
            o=_linear_weights(attn.o_proj, "o_proj", label),
            post_attention_norm=layer.post_attention_layernorm.weight,
            gate=_linear_weights(mlp.gate_proj, "gate_proj", label),
            up=_linear_weights(mlp.up_proj, "up_proj", label),
            down=_linear_weights(mlp.down_proj, "down_proj", label),
        )

    def weight_bytes_per_step(self) -> int:
        """Bytes of weights one decode step reads: every layer, the final norm and lm_head (the
        embedding lookup reads one row)."""
        tensors = [self.final_norm, self.embed[0]]
        for w in self.layers:
            tensors += [w.input_norm, w.post_attention_norm, w.q_norm, w.k_norm]
        for projection in self._projections():
            # An int8 projection reads its int8 weight, its scales and its bias.
            tensors += _projection_tensors(projection)
        return sum(t.nbytes for t in tensors if t is not None)

    def _rotary_rows(
        self, start: int, stop: int, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and [-sin, sin] at positions start..stop−1, [stop − start, 1, head_dim], in
        `dtype` (the model's by default)."""
        dtype = dtype or self.dtype
        cos, signed_sin = self._rotary_tables[torch.float32]
        if stop > cos.shape[0]:
            length = max(stop, 2 * cos.shape[0], 256)
            # The transformers rotary module's arithmetic: fp32 angles, then the model's dtype.
            angles = torch.arange(length, device=self.device).float()[:, None] * self.inv_freq
            cos = angles.cos() * self.attention_scaling
            sin = angles.sin() * self.attention_scaling
            wide = (torch.cat((cos, cos), dim=-1)[:, None], torch.cat((-sin, sin), dim=-1)[:, None])
            self._rotary_tables = {torch.float32: wide}
        if dtype not in self._rotary_tables:
            cos, signed_sin = self._rotary_tables[torch.float32]
            self._rotary_tables[dtype] = (cos.to(dtype), signed_sin.to(dtype))
        cos, signed_sin = self._rotary_tables[dtype]
        return cos[start:stop], signed_sin[start:stop]

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, weight.shape, weight, self.eps)
        # transformers normalizes in fp32 and scales in the model's dtype.
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)

    @torch.inference_mode()
    def __call__(
        self,
        ids: torch.Tensor | Sequence[int],
        slot: int | torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        *,
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Logits [n, vocab] (or [1, vocab], the last token's) for ids [n] at slots slot..;
        their keys and values land in keys/values [layers, kv_heads, capacity, head_dim].

        `slot` may instead be the slots themselves, increasing ([n] integers, not necessarily
        adjacent): token i then sits at slot[i] and sees the slab up to it, the batch's earlier
        tokens included, which is what running the runs one after the other would give. It lets
        one pass encode an edit's new tokens and re-feed the document's last token."""
        n = len(ids)
        scattered = isinstance(slot, torch.Tensor)
        if scattered:
            slots = slot.to(device=self.device, dtype=torch.long)
            if slots.shape != (n,) or (n > 1 and bool((slots[1:] <= slots[:-1]).any())):
                raise ValueError(f"slots {slots.tolist()} are not {n} increasing slots")
            first, stop = int(slots[0]), int(slots[-1]) + 1
        else:
            first, stop = slot, slot + n
        if first < 0 or stop > keys.shape[2]:
            raise ValueError(f"slots {first}..{stop} do not fit a slab of {keys.shape[2]} slots")
        chunked = n > COMPILED_MAX_ROWS and self.dtype in CHUNKED_DTYPES
        if (n <= COMPILED_MAX_ROWS or chunked) and self.compiled_step_off is None:
            try:
                compiled = self._compiled_step()
            except CompiledStepUnavailable as error:
                # The weights moved to a storage it cannot read; torch can.
                self.compiled_step_off = str(error)
            else:
                # The pass rotates in float32 whatever the weights' dtype.
                cos, signed_sin = self._rotary_rows(first, stop, torch.float32)
                if scattered:
                    cos, signed_sin = cos[slots - first], signed_sin[slots - first]
                token_list = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
                slot_list = slots.tolist() if scattered else list(range(first, stop))
                threads = torch.get_num_threads()
                # Each pass's tokens see the slab the passes before wrote: the same as one pass.
                logits = [
                    compiled(
                        token_list[at : at + COMPILED_MAX_ROWS],
                        slot_list[at : at + COMPILED_MAX_ROWS],
                        keys,
                        values,
                        cos[at : at + COMPILED_MAX_ROWS],
                        signed_sin[at : at + COMPILED_MAX_ROWS],
                        threads,
                        all_logits=all_logits,
                    )
                    for at in range(0, n, COMPILED_MAX_ROWS)
                ]
                if len(logits) == 1:
                    return logits[0]
                return torch.cat(logits) if all_logits else logits[-1]
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        groups = heads // kv_heads
        cos, signed_sin = self._rotary_rows(first, stop)
        if scattered:
            cos, signed_sin = cos[slots - first], signed_sin[slots - first]
        visible = None
        if n > 1:
            # Query i sees slots 0..its own; one token sees them all and needs no mask.
            query_slots = slots if scattered else torch.arange(first, stop, device=self.device)
            visible = torch.arange(stop, device=self.device) <= query_slots[:, None]
        # The batched-products attention was measured faster on CPU only; GPUs keep SDPA's kernels.
        grouped = self.device.type == "cpu" and n <= GROUPED_ATTENTION_MAX_ROWS
        masked = ~visible if visible is not None and grouped else None
        x = F.embedding(ids, self.embed)
        products = self.products
        for layer_keys, layer_values, w in zip(keys.unbind(0), values.unbind(0), self.layers):
            q, k, v = self.attention_inputs(x, w, cos, signed_sin, products)
            if scattered:
                layer_keys.index_copy_(1, slots, k.transpose(0, 1))
                layer_values.index_copy_(1, slots, v.transpose(0, 1))
            else:
                layer_keys[:, first:stop].copy_(k.transpose(0, 1))
                layer_values[:, first:stop].copy_(v.transpose(0, 1))
            # 4-D throughout: with 3-D inputs SDPA takes its slow math kernel on CPU.
            if n == 1:
                # A group's query heads laid along the query axis share their K/V head as is.
                attended = F.scaled_dot_product_attention(
                    q.view(1, kv_heads, groups, head_dim),
                    layer_keys[None, :, :stop],
                    layer_values[None, :, :stop],
                ).view(1, heads * head_dim)
            elif masked is not None:
                attended = self._grouped_attention(
                    q, layer_keys[:, :stop], layer_values[:, :stop], masked
                )
            else:
                attended = F.scaled_dot_product_attention(
                    q.transpose(0, 1)[None],
                    layer_keys[None, :, :stop],
                    layer_values[None, :, :stop],
                    attn_mask=visible,
                    enable_gqa=groups > 1,
                )[0]
                attended = attended.transpose(0, 1).reshape(n, heads * head_dim)
            x = self.after_attention(x, attended, w, products)
        if not all_logits:
            x = x[-1:]
        return self.logits(x, products)

    def _grouped_attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        """Attention of a few queries q [n, heads, head_dim] over keys/values [kv_heads, slots,
        head_dim], each query kept off the slots `masked` [n, slots] marks; [n, heads · head_dim].

        A K/V head's query heads and all n queries go through it as one matrix: two batched
        products over the K/V heads, which on CPU run 1.3-1.8x faster than SDPA's masked GQA
        kernel for 2-64 queries (0.5B shape, 2k slots, 2 threads)."""
        n, heads, head_dim = q.shape
        kv_heads, slots = keys.shape[0], keys.shape[1]
        groups = heads // kv_heads
        # Scaled before the product: n · heads · head_dim values instead of the scores' many.
        grouped = (q * head_dim**-0.5).view(n, kv_heads, groups, head_dim).permute(1, 2, 0, 3)
        scores = torch.bmm(grouped.reshape(kv_heads, groups * n, head_dim), keys.transpose(1, 2))
        scores = scores.view(kv_heads, groups, n, slots)
        scores.masked_fill_(masked, float("-inf"))
        weights = torch.softmax(scores.view(kv_heads, groups * n, slots), dim=-1)
        attended = torch.bmm(weights, values).view(kv_heads, groups, n, head_dim)
        return attended.permute(2, 0, 1, 3).reshape(n, heads * head_dim)

    def attention_inputs(
        self,
        x: torch.Tensor,
        w: _LayerWeights,
        cos: torch.Tensor,
        signed_sin: torch.Tensor,
        products: Products = TORCH_PRODUCTS,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A layer's q [n, heads, head_dim] and k [n, kv_heads, head_dim], both rotated by
        cos/signed_sin [n, 1, head_dim], and v [n, kv_heads, head_dim] for hidden states x."""
        n, heads = x.shape[0], self.num_heads
        h = self._rms_norm(x, w.input_norm)
        q = products(h, w.q).view(n, heads, self.head_dim)
        k = products(h, w.k).view(n, self.num_kv_heads, self.head_dim)
        v = products(h, w.v).view(n, self.num_kv_heads, self.head_dim)
        qk = torch.cat((q, k), dim=1)  # one RoPE pass for both
        if w.q_norm is not None:
            qk = torch.cat(
                (
                    self._rms_norm(qk[:, :heads], w.q_norm),
                    self._rms_norm(qk[:, heads:], w.k_norm),
                ),
                dim=1,
            )
        # rotate_half(x) · sin = [x2, x1] · [-sin, sin]: one roll instead of slices and a cat.
        rotated = qk * cos
        rotated.addcmul_(qk.roll(self.head_dim // 2, dims=-1), signed_sin)
        return rotated[:, :heads], rotated[:, heads:], v

    def after_attention(
        self,
        x: torch.Tensor,
        attended: torch.Tensor,
        w: _LayerWeights,
        products: Products = TORCH_PRODUCTS,
    ) -> torch.Tensor:
        """The rest of a layer: the output projection of `attended` [n, heads · head_dim] and
        the MLP, each added to the residual x [n, hidden]."""
        x = x + products(attended, w.o)
        h = self._rms_norm(x, w.post_attention_norm)
        gate, up = products(h, w.gate), products(h, w.up)
        return x + products(F.silu(gate) * up, w.down)

    def logits(self, x: torch.Tensor, products: Products = TORCH_PRODUCTS) -> torch.Tensor:
        """Logits [n, vocab] for final hidden states x [n, hidden]."""
        return products(self._rms_norm(x, self.final_norm), self.lm_head)

    def rotary_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and [-sin, sin] for positions 0..length−1, [length, 1, head_dim]."""
        return self._rotary_rows(0, length)
