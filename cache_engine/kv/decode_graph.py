"""Decode steps replayed as CUDA graphs (`EditableCache(cuda_graphs=True)`, `--cuda-graphs`).

On a GPU a small model's decode step is bound by launching its few hundred kernels, not by
the arithmetic (gpt-fast's observation). A CUDA graph records the launches once and replays
them as one. Recording needs every shape and address fixed, which `LlamaStep` is not: it
slices the slab to the tokens cached so far. `StaticDecodeStep` is the same one-token forward
over the whole slab, with the token and its slot in device tensors read by the kernels: the
key and value go in with `index_copy_` at the slot, and attention masks the slots after it
instead of slicing them off. Its arithmetic is `LlamaStep`'s own (`attention_inputs`,
`after_attention`, `logits`), so the two agree to rounding; tests/kv/test_decode_graph.py
compares them on CPU, where the static step runs eagerly.

A graph is bound to the slab it was recorded on: the cache drops it when it grows into a new
slab (growth doubles, so that is rare) and `CudaGraphDecode` records again on the next step. It
is bound to the weights' memory too: a graph replays the addresses it recorded, so the model's
parameters must not be re-laid (`store_weights_transposed`, `.to()`) while a cache holds one.
Untested on a GPU here: the project's machines have none; the CUDA test skips without one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cache_engine.kv.llama_step import LlamaStep


class StaticDecodeStep:
    """One token through `step`'s weights at a slot of the keys/values slab [layers, kv_heads,
    capacity, head_dim], every shape fixed by the slab: write the token and slot into `token`
    and `slot`, call `run`, read `logits` [1, vocab]."""

    def __init__(self, step: LlamaStep, keys: torch.Tensor, values: torch.Tensor):
        if keys.shape != values.shape or keys.dim() != 4 or keys.shape[0] != len(step.layers):
            raise ValueError(
                f"keys {tuple(keys.shape)} and values {tuple(values.shape)} are not a slab of "
                f"{len(step.layers)} layers"
            )
        self.step = step
        self.keys = keys
        self.values = values
        capacity = keys.shape[2]
        self.cos, self.signed_sin = step.rotary_table(capacity)
        self.all_slots = torch.arange(capacity, device=keys.device)
        self.token = torch.zeros(1, dtype=torch.long, device=keys.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=keys.device)
        self.logits = torch.empty(0)

    @torch.inference_mode()
    def run(self) -> torch.Tensor:
        step = self.step
        heads, kv_heads, head_dim = step.num_heads, step.num_kv_heads, step.head_dim
        groups = heads // kv_heads
        cos = self.cos.index_select(0, self.slot)
        signed_sin = self.signed_sin.index_select(0, self.slot)
        # The slots after this one hold stale or no keys: masked, where LlamaStep slices.
        visible = (self.all_slots <= self.slot)[None, None, None]
        x = F.embedding(self.token, step.embed)
        for layer_keys, layer_values, w in zip(
            self.keys.unbind(0), self.values.unbind(0), step.layers
        ):
            q, k, v = step.attention_inputs(x, w, cos, signed_sin)
            layer_keys.index_copy_(1, self.slot, k.transpose(0, 1))
            layer_values.index_copy_(1, self.slot, v.transpose(0, 1))
            attended = F.scaled_dot_product_attention(
                q.reshape(1, kv_heads, groups, head_dim),
                layer_keys[None],
                layer_values[None],
                attn_mask=visible,
            ).view(1, heads * head_dim)
            x = step.after_attention(x, attended, w)
        self.logits = step.logits(x)
        return self.logits


class CudaGraphDecode:
    """One-token decode steps of `step` replayed from a CUDA graph; call it as
    `LlamaStep(ids, slot, keys, values)` with one id and an int slot."""

    def __init__(self, step: LlamaStep):
        if step.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {step.device}")
        self.step = step
        self.captures = 0
        self._static: StaticDecodeStep | None = None
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(
        self, ids: torch.Tensor, slot: int, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        if ids.shape != (1,):
            raise ValueError(
                f"a graphed decode step takes ids of shape (1,), got {tuple(ids.shape)}"
            )
        if not 0 <= slot < keys.shape[2]:
            raise ValueError(f"slot {slot} does not fit a slab of {keys.shape[2]} slots")
        static = self._static
        if static is None or static.keys is not keys or static.values is not values:
            static = self._record(keys, values, ids, slot)
        static.token.copy_(ids, non_blocking=True)
        static.slot.fill_(slot)
        assert self._graph is not None
        self._graph.replay()
        # The graph's output buffer is overwritten by the next replay.
        return static.logits.clone()

    def release(self) -> None:
        """Drop the graph and its memory pool (the cache's slab is going away)."""
        self._static = None
        self._graph = None

    def _record(
        self, keys: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, slot: int
    ) -> StaticDecodeStep:
        self.release()
        static = StaticDecodeStep(self.step, keys, values)
        # Warm-up passes run for real: they write this call's own key and value at its slot,
        # which the replay then writes again.
        static.token.copy_(ids)
        static.slot.fill_(slot)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                static.run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Other server threads may use the GPU meanwhile (a refresh, another document).
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static.run()
        self._static, self._graph = static, graph
        self.captures += 1
        return static
