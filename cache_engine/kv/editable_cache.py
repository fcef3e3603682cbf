"""A document's KV cache that follows edits: Positional Integrity Encoding (arXiv 2407.03157).

An edit replaces cached tokens [i, j) with m new tokens, Δ = m − (j − i). Under `pie` the prefix
stays, the m new tokens are encoded at positions i..i+m−1 against the prefix, and the suffix is
moved Δ slots with its keys re-rotated by R(Δ) in one fused pass (`kernels.shift_rotate_suffix`).
The suffix's content is stale (it never saw the new tokens), which the paper finds costs little
on code; the token whose logits predict the next one is re-fed, since its hidden state is stale.

Staleness: the cache knows how many leading tokens are exact, i.e. hold the K/V a fresh
encoding of today's sequence would give. A moved suffix is stale (the text before it changed
since it was encoded), and so is every token encoded after a stale one, since it attended to
it; tokens are never exact after a stale one, so one boundary, `exact_tokens`, says it all.
`refresh` recomputes a run of cached tokens in place against the current cache: from the first
stale token onward it moves the boundary, and a refresh to the end makes the cache exact.

Storage is one preallocated buffer for all layers, [layers, kv_heads, capacity, head_dim], whose
capacity grows geometrically. A forward writes its new keys at the slot the engine chooses,
which is how new tokens land in the middle. For Llama-family models that forward is our own
(`llama_step.LlamaStep`, which writes the buffer directly); for the others it is the model's,
through `SlabCache`, a transformers `Cache` whose layers are views into the buffer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

import kernels
from cache_engine.kv.decode_graph import CudaGraphDecode
from cache_engine.kv.llama_step import COMPILED_MAX_ROWS, LlamaStep, UnsupportedStepError
from cache_engine.kv.rotary import RotarySpec, rotary_spec
from cache_engine.kv.token_edits import TokenEdit, apply_to_ids, validate_edits
from kernels.llama_decode_cpu import BoundPass


class Drafter(Protocol):
    """Proposes the tokens likely to follow `ids` (see completion/speculation.py)."""

    def __call__(self, ids: Sequence[int]) -> list[int]: ...

    def record(self, accepted: int, verified: int) -> None:
        """`accepted` of the `verified` drafted tokens the pass checked were kept (`verified`
        may be fewer than were drafted: the pass never goes past the generation's limit)."""


class TokenConstraint(Protocol):
    """The token ids allowed next after `generated`, or None once decoding is free (token
    healing: the first tokens must re-create the text the prompt was backed up over).

    Once it answers None it is not asked again."""

    def __call__(self, generated: Sequence[int]) -> torch.Tensor | None: ...


class NextTokenChooser(Protocol):
    """Chooses the token after `ids` from the model's logits row [vocab] for that place, of the
    `allowed` ids if given, and says its log-probability; greedy decoding by the model alone is
    the default (see model/document_ngrams.py for one that mixes in the document).

    It must depend on `ids` and the row only: verification checks each drafted token against
    the choice made for the sequence ending just before it. It must not keep `ids`, which grows
    after the call as a verify pass's drafts are kept."""

    def __call__(
        self, logits: torch.Tensor, ids: Sequence[int], allowed: torch.Tensor | None
    ) -> tuple[int, float]: ...


# Called with each new id and its log-probability (the model's, or the chooser's); False stops
# decoding.
OnToken = Callable[[int, float], bool]


Strategy = Literal["full", "prefix", "pie", "conflict"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

# Which forward pass runs the model: `lean` is our own over the slab (llama_step.py), `hf` the
# transformers one through `SlabCache`, `auto` lean where the model is supported, else hf.
ForwardPath = Literal["auto", "lean", "hf"]
FORWARD_PATHS: tuple[str, ...] = get_args(ForwardPath)

# Long prefills run in chunks so the attention scores of one chunk bound peak memory.
PREFILL_CHUNK = 2048
# Passes this long or longer set the cache's rate of recomputation (`tokens_within`); shorter
# ones cost mostly per-pass overhead and would understate what a long refresh can do.
RATE_MIN_TOKENS = 32


@dataclass
class EditStats:
    """The cost of one cache operation."""

    strategy: str
    tokens_encoded: int  # tokens run through the model
    tokens_reused: int  # cached tokens kept without running the model (prefix + moved suffix)
    tokens_moved: int  # suffix tokens shifted (and, under pie, re-rotated)
    seconds: float
    tokens_refreshed: int = 0  # cached tokens recomputed in place (`refresh`)


class _Slab:
    """The shared K/V buffers and the slot where the next forward pass writes."""

    # Buffers must be ordinary tensors even when made during generation (inference mode): the
    # kernels update them in place outside it.
    @torch.inference_mode(False)
    def __init__(self, spec: RotarySpec, capacity: int, dtype: torch.dtype, device: torch.device):
        shape = (spec.num_layers, spec.num_kv_heads, capacity, spec.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.write_at = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @torch.inference_mode(False)
    def grow(self, capacity: int, keep: int) -> None:
        keys = self.keys.new_zeros((*self.keys.shape[:2], capacity, self.keys.shape[3]))
        values = torch.zeros_like(keys)
        keys[:, :, :keep].copy_(self.keys[:, :, :keep])
        values[:, :, :keep].copy_(self.values[:, :, :keep])
        self.keys, self.values = keys, values


class _SlabLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, slab: _Slab, layer_idx: int):
        super().__init__()
        self._slab = slab
        self._layer_idx = layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self._slab.write_at
        stop = start + key_states.shape[-2]
        keys = self._slab.keys[self._layer_idx]
        values = self._slab.values[self._layer_idx]
        keys[:, start:stop].copy_(key_states[0])
        values[:, start:stop].copy_(value_states[0])
        return keys[None, :, :stop], values[None, :, :stop]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._slab.write_at + query_length, 0

    def get_seq_length(self) -> int:
        return self._slab.write_at

    def get_max_length(self) -> int:
        return -1


class SlabCache(Cache):
    """A transformers Cache over the slab: each forward writes at `slab.write_at`."""

    def __init__(self, slab: _Slab, num_layers: int):
        super().__init__(layers=[_SlabLayer(slab, i) for i in range(num_layers)])


class EditableCache:
    """The KV cache of one token sequence, edited in place under a chosen strategy.

    Strategies: `full` re-encodes everything (the reference); `prefix` keeps the longest
    unchanged prefix and re-encodes the rest (exact); `pie` encodes only new tokens and moves and
    re-rotates the suffix; `conflict` splices new tokens in with no position fix (the paper's
    broken baseline, for evaluation only).

    `blas_products` is the lean step's choice of products through numpy's BLAS (`LlamaStep`);
    None decides by device, dtype and process (kernels/blas_linear.py); `onednn_products` its
    choice of oneDNN for passes of several rows (kernels/onednn_linear.py); `compiled_step` its
    choice of the compiled C pass for passes of a few tokens on CPU (kernels/llama_decode_cpu.py).
    `cuda_graphs` replays
    one-token decode steps from a CUDA graph (decode_graph.py); it needs the lean step and a
    model on a CUDA device.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        strategy: Strategy = "pie",
        initial_capacity: int = 256,
        max_capacity: int | None = None,
        forward: ForwardPath = "auto",
        blas_products: bool | None = None,
        onednn_products: bool | None = None,
        compiled_step: bool | None = None,
        cuda_graphs: bool = False,
    ):
        _check_strategy(strategy)
        if forward not in FORWARD_PATHS:
            raise ValueError(
                f"unknown forward {forward!r}; choose one of {', '.join(FORWARD_PATHS)}"
            )
        self.model = model
        self.spec = rotary_spec(model)
        self.strategy: Strategy = strategy
        window = self.spec.attention_window
        if max_capacity is None:
            max_capacity = window
        elif window is not None:
            max_capacity = min(max_capacity, window)
        if max_capacity is not None and max_capacity < 1:
            raise ValueError(f"max_capacity must be at least 1, got {max_capacity}")
        self.max_capacity = max_capacity
        first = max(16, initial_capacity)
        if max_capacity is not None:
            first = min(first, max_capacity)
        parameter = next(model.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self._slab = _Slab(self.spec, first, self.dtype, self.device)
        self._hf_cache = SlabCache(self._slab, self.spec.num_layers)
        self._lean_step = self._lean_step_for(
            forward, blas_products, onednn_products, compiled_step
        )
        self._decode_graph: CudaGraphDecode | None = None
        if cuda_graphs:
            if self._lean_step is None:
                why = (
                    "forward='hf' was asked for"
                    if forward == "hf"
                    else f"model type {model.config.model_type!r} runs on the transformers forward"
                )
                raise ValueError(f"CUDA graphs replay the lean step, and {why}")
            self._decode_graph = CudaGraphDecode(self._lean_step)
        self._inv_freq = self.spec.inv_freq.to(self.device)
        self._ids: list[int] = []
        # The RoPE position each slot's key carries. `pie`, `prefix` and `full` keep it 0..n−1;
        # `conflict` does not, which is what makes it the broken baseline.
        self._positions = torch.zeros(first, dtype=torch.long)
        self._next_logits: torch.Tensor | None = None
        self._last_forward_logits: torch.Tensor | None = None
        # Leading tokens whose K/V equal a fresh encoding of the current ids (see module doc).
        self._exact = 0
        self.last_edit: EditStats | None = None
        self.total_encoded = 0
        self.total_reused = 0
        self._seconds_per_token: float | None = None

    # ---- reading -------------------------------------------------------------------------

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def capacity(self) -> int:
        return self._slab.capacity

    @property
    def forward_path(self) -> Literal["lean", "hf"]:
        """The forward pass in use (`auto` resolved)."""
        return "hf" if self._lean_step is None else "lean"

    @property
    def positions(self) -> torch.Tensor:
        return self._positions[: len(self._ids)].clone()

    @property
    def exact_tokens(self) -> int:
        """How many leading tokens hold exactly the K/V a fresh encoding would give."""
        return self._exact

    @property
    def stale_tokens(self) -> int:
        """Tokens whose K/V may differ from a fresh encoding: all from `exact_tokens` on."""
        return len(self._ids) - self._exact

    def stale_mask(self) -> torch.Tensor:
        """For every cached token, whether it is stale: bool [len(self)]."""
        mask = torch.zeros(len(self._ids), dtype=torch.bool)
        mask[self._exact :] = True
        return mask

    def nbytes(self) -> int:
        return self._slab.keys.nbytes + self._slab.values.nbytes

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys and values of one layer, [kv_heads, n, head_dim] (copies)."""
        n = len(self._ids)
        return self._slab.keys[layer, :, :n].clone(), self._slab.values[layer, :, :n].clone()

    # ---- whole-sequence operations -------------------------------------------------------

    def reset(self, ids: Sequence[int]) -> EditStats:
        """Encode `ids` from scratch, replacing whatever was cached."""
        new_ids = self._checked_ids(ids, "reset ids")
        started = time.perf_counter()
        self._ensure_capacity(len(new_ids))
        self._ids = []
        self._next_logits = None
        self._exact = 0
        self._encode_at(0, new_ids)
        return self._record("full", len(new_ids), 0, 0, started)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= len(self._ids):
            raise ValueError(f"truncate length {length} is out of range 0..{len(self._ids)}")
        if length < len(self._ids):
            self._ids = self._ids[:length]
            self._next_logits = None
            self._exact = min(self._exact, length)

    @torch.inference_mode(False)
    def clone(self, *, strategy: Strategy | None = None) -> EditableCache:
        """An independent copy, to try several strategies on one encoded sequence."""
        twin = EditableCache.__new__(EditableCache)
        twin.__dict__.update(self.__dict__)
        twin.strategy = self.strategy if strategy is None else strategy
        _check_strategy(twin.strategy)
        twin._slab = _Slab.__new__(_Slab)
        twin._slab.keys = self._slab.keys.clone()
        twin._slab.values = self._slab.values.clone()
        twin._slab.write_at = 0
        twin._hf_cache = SlabCache(twin._slab, self.spec.num_layers)
        twin._ids = list(self._ids)
        twin._positions = self._positions.clone()
        if self._decode_graph is not None:
            twin._decode_graph = CudaGraphDecode(self._decode_graph.step)
        return twin

    @torch.inference_mode(False)
    def release(self) -> None:
        """Free the buffers; the cache is empty and usable afterwards."""
        if self._decode_graph is not None:
            self._decode_graph.release()
        self._ids = []
        self._exact = 0
        self._next_logits = None
        self._slab.keys = self._slab.keys.new_zeros(
            (*self._slab.keys.shape[:2], 16, self.spec.head_dim)
        )
        self._slab.values = torch.zeros_like(self._slab.keys)
        self._positions = torch.zeros(16, dtype=torch.long)

    # ---- edits ---------------------------------------------------------------------------

    def insert(
        self, index: int, ids: Sequence[int], *, strategy: Strategy | None = None
    ) -> EditStats:
        new_ids = self._checked_ids(ids, "inserted ids")
        return self.apply_edits([TokenEdit.insert(index, new_ids)], strategy=strategy)

    def delete(self, start: int, end: int, *, strategy: Strategy | None = None) -> EditStats:
        return self.apply_edits([TokenEdit.delete(start, end)], strategy=strategy)

    def replace(
        self, start: int, end: int, ids: Sequence[int], *, strategy: Strategy | None = None
    ) -> EditStats:
        new_ids = self._checked_ids(ids, "replacement ids")
        return self.apply_edits([TokenEdit.replace(start, end, new_ids)], strategy=strategy)

    def apply_edits(
        self, edits: Sequence[TokenEdit], *, strategy: Strategy | None = None
    ) -> EditStats:
        """Apply a batch of non-overlapping edits, indexed against the current sequence."""
        chosen = self.strategy if strategy is None else strategy
        _check_strategy(chosen)
        ordered = validate_edits(edits, len(self._ids))
        for edit in ordered:
            self._checked_ids(edit.new_ids, f"ids of {edit}")
        new_ids = apply_to_ids(self._ids, ordered)
        self._check_capacity(len(new_ids))
        ordered = [e for e in ordered if e.new_ids != tuple(self._ids[e.start : e.end])]
        started = time.perf_counter()
        if not ordered:
            return self._record(chosen, 0, len(self._ids), 0, started)
        self._ensure_capacity(max(len(new_ids), len(self._ids)))
        if chosen == "full":
            self._ids = []
            self._next_logits = None
            self._exact = 0
            self._encode_at(0, new_ids)
            return self._record(chosen, len(new_ids), 0, 0, started)
        if chosen == "prefix":
            keep = ordered[0].start
            self._ids = self._ids[:keep]
            self._next_logits = None
            self._exact = min(self._exact, keep)
            self._encode_at(keep, new_ids[keep:])
            return self._record(chosen, len(new_ids) - keep, keep, 0, started)
        return self._splice(
            ordered, new_ids, rotate=chosen == "pie", strategy=chosen, started=started
        )

    def _splice(
        self,
        ordered: list[TokenEdit],
        new_ids: list[int],
        *,
        rotate: bool,
        strategy: str,
        started: float,
    ) -> EditStats:
        old_len = len(self._ids)
        # Segment k is the run of old tokens between edit k−1 and edit k; it moves by the net
        # shift of the edits before it, so each token is rotated once by its net Δ.
        segments: list[tuple[int, int, int]] = []  # (start, end, shift)
        shift = 0
        for k, edit in enumerate(ordered):
            shift += edit.delta
            seg_start = edit.end
            seg_end = ordered[k + 1].start if k + 1 < len(ordered) else old_len
            if seg_end > seg_start and shift != 0:
                segments.append((seg_start, seg_end, shift))
        # Left moves go left to right and right moves right to left, so no segment overwrites
        # another's source before that one has moved.
        lefts = [s for s in segments if s[2] < 0]
        rights = [s for s in reversed(segments) if s[2] > 0]
        moved = 0
        for seg_start, seg_end, seg_shift in lefts + rights:
            self._move(seg_start, seg_end, seg_shift, rotate)
            moved += seg_end - seg_start
        self._ids = new_ids
        self._next_logits = None
        first = ordered[0]
        exact_before = self._exact
        self._exact = min(self._exact, first.start)
        runs: list[tuple[list[int], int]] = []  # (new ids, their first slot)
        offset = 0
        for edit in ordered:
            if edit.new_ids:
                runs.append((list(edit.new_ids), edit.start + offset))
            offset += edit.delta
        encoded = sum(len(ids) for ids, _ in runs)
        # The last run may end the sequence (an edit at the end, or one just before a deletion
        # of the tail): its pass then gives the next-token logits itself.
        reaches_end = bool(runs) and runs[-1][1] + len(runs[-1][0]) == len(new_ids)
        # With new tokens to encode and a stale last token, one pass does both: the last token
        # is re-fed at its slot after the runs (what next_token_logits would do in a second
        # pass, which costs a full read of the weights).
        fuse = bool(runs) and not reaches_end and self._lean_step is not None
        fuse = fuse and encoded + 1 <= PREFILL_CHUNK
        if fuse:
            ids = [token for run, _ in runs for token in run] + [new_ids[-1]]
            slots = [start + k for run, start in runs for k in range(len(run))]
            self._next_logits = self._forward_scattered(ids, [*slots, len(new_ids) - 1])
        else:
            # New tokens see everything before them in the edited sequence, nothing after.
            for run, start in runs:
                self._forward(run, start, keep_logits=False)
        if exact_before >= first.start:
            # The first edit's new tokens saw only exact tokens; what follows them is stale,
            # unless nothing follows them at all.
            self._exact = first.start + len(first.new_ids)
        if fuse and self._exact == len(new_ids) - 1:
            self._exact = len(new_ids)
        if reaches_end:
            # The last run's forward already produced the next-token logits (exact when
            # everything before it is).
            self._next_logits = self._last_forward_logits
        reused = len(new_ids) - encoded
        return self._record(strategy, encoded, reused, moved, started)

    def _move(self, start: int, end: int, shift: int, rotate: bool) -> None:
        slab = self._slab
        if rotate:
            kernels.shift_rotate_suffix(
                slab.keys,
                slab.values,
                start,
                end,
                shift,
                self._inv_freq,
                rotary_dim=self.spec.rotary_dim,
                interleaved=self.spec.interleaved,
            )
            self._positions[start + shift : end + shift] = (
                self._positions[start:end].clone() + shift
            )
        else:
            kernels.copy_suffix(slab.keys, slab.values, start, end, shift)
            self._positions[start + shift : end + shift] = self._positions[start:end].clone()

    # ---- refresh -------------------------------------------------------------------------

    def refresh(
        self,
        start: int,
        end: int | None = None,
        *,
        chunk: int = PREFILL_CHUNK,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> EditStats:
        """Recompute cached tokens [start, end) in place, attending to the current cache.

        Runs in chunks of `chunk` tokens and checks `should_stop` before each one, so a stopped
        refresh has recomputed a prefix of the run and the cache stays consistent: ids never
        change, and the exact boundary only moves past chunks that were finished.
        """
        n = len(self._ids)
        end = n if end is None else end
        if not 0 <= start <= end <= n:
            raise ValueError(f"refresh range [{start}, {end}) is out of range 0..{n}")
        if chunk < 1:
            raise ValueError(f"refresh chunk must be at least 1 token, got {chunk}")
        started = time.perf_counter()
        done = start
        while done < end and not should_stop():
            stop = min(end, done + chunk)
            self._forward(self._ids[done:stop], done, keep_logits=False)
            if self._exact >= done:
                self._exact = max(self._exact, stop)
            if stop == n:
                self._next_logits = self._last_forward_logits
            elif self._next_logits is not None:
                # The last token's logits came from K/V that just changed under it.
                self._next_logits = None
            done = stop
        refreshed = done - start
        stats = self._record("refresh", refreshed, n - refreshed, 0, started)
        stats.tokens_refreshed = refreshed
        return stats

    def tokens_within(self, seconds: float) -> int | None:
        """About how many tokens one pass recomputes in `seconds`, at the per-token rate of this
        cache's recent passes of RATE_MIN_TOKENS or more (encodes, refreshes, appends); None
        before it has run one. Approximate: a short pass also pays a fixed cost, about one
        decode step's weight reads, which the rate spreads over many tokens."""
        if self._seconds_per_token is None:
            return None
        return max(0, int(seconds / self._seconds_per_token))

    def refresh_stale(
        self, *, chunk: int = PREFILL_CHUNK, should_stop: Callable[[], bool] = lambda: False
    ) -> EditStats:
        """Refresh from the first stale token to the end: afterwards the cache is exact."""
        return self.refresh(self._exact, chunk=chunk, should_stop=should_stop)

    # ---- model passes --------------------------------------------------------------------

    def append(self, ids: Sequence[int]) -> torch.Tensor:
        """Encode `ids` after the cached tokens and keep them; returns fp32 logits [len(ids), vocab]."""
        new_ids = self._checked_ids(ids, "appended ids")
        if not new_ids:
            raise ValueError("append needs at least one token id")
        self._check_capacity(len(self._ids) + len(new_ids))
        self._ensure_capacity(len(self._ids) + len(new_ids))
        started = time.perf_counter()
        base = len(self._ids)
        logits = self._forward(new_ids, base, keep_logits=True, all_logits=True)
        self._ids.extend(new_ids)
        if self._exact == base:
            self._exact = len(self._ids)
        self._next_logits = logits[-1]
        self._record("append", len(new_ids), len(self._ids) - len(new_ids), 0, started)
        return logits

    def next_token_logits(self) -> torch.Tensor:
        """fp32 logits for the token after the cached ones, re-feeding the last token if stale."""
        if not self._ids:
            raise ValueError("the cache is empty: there is no token to predict from")
        if self._next_logits is None:
            n = len(self._ids)
            # Re-encoding the last token also refreshes its own keys and values.
            last = self._ids[-1]
            self._ids = self._ids[:-1]
            self._forward([last], n - 1, keep_logits=True)
            self._ids.append(last)
            if self._exact == n - 1:
                self._exact = n
            self._next_logits = self._last_forward_logits
        return self._next_logits

    def score(self, ids: Sequence[int]) -> torch.Tensor:
        """fp32 logits for `ids` continuing the cache, without keeping them: [len(ids), vocab]."""
        new_ids = self._checked_ids(ids, "scored ids")
        if not new_ids:
            raise ValueError("score needs at least one token id")
        base = len(self._ids)
        self._check_capacity(base + len(new_ids))
        self._ensure_capacity(base + len(new_ids))
        return self._forward(new_ids, base, keep_logits=False, all_logits=True)

    @torch.inference_mode()
    def generate(
        self,
        max_new_tokens: int,
        on_token: OnToken,
        *,
        draft: Drafter | None = None,
        constraint: TokenConstraint | None = None,
        choose: NextTokenChooser | None = None,
    ) -> list[int]:
        """Greedy decoding from the cache; generated tokens are dropped from it afterwards.

        `on_token` sees each new id with its log-probability (under the model's whole
        distribution, whatever `constraint` allowed, or the chooser's) and returns False to stop (a stop rule, a
        confidence cut or a cancellation). With `constraint`, each token is the most likely of
        the allowed ones until the constraint lets go. With `draft`, each free step verifies
        the drafted continuation of (cached ids + generated ids) in the same forward pass as
        the step's own token and keeps the drafted tokens that greedy decoding would have
        produced: the same output in fewer passes. With `choose`, it picks each token instead
        of the model's most likely one, and says its log-probability.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        generated: list[int] = []
        if max_new_tokens == 0:
            return generated
        base = len(self._ids)
        limit = max_new_tokens
        if self.max_capacity is not None:
            limit = min(limit, self.max_capacity - base + 1)
        allowed = constraint(generated) if constraint is not None else None
        # The model's own choice needs no ids, and building them costs a copy of the prompt.
        reads_ids = choose is not None
        if choose is None:
            choose = _model_greedy
        token, log_prob = choose(self.next_token_logits(), self._ids, allowed)
        bound = self._bound_pass()
        while True:
            generated.append(token)
            if not on_token(token, log_prob) or len(generated) >= limit:
                return generated
            if allowed is not None:
                allowed = constraint(generated) if constraint is not None else None
            slot = base + len(generated) - 1
            proposal = draft(self._ids + generated) if draft is not None and allowed is None else []
            # Room for the step's token and the draft, never past what may be generated.
            proposal = proposal[: max(0, limit - len(generated))]
            if self.max_capacity is not None:
                proposal = proposal[: max(0, self.max_capacity - slot - 1)]
            if self._ensure_capacity(slot + 1 + len(proposal), keep=slot):
                bound = self._bound_pass()
            if bound is not None and len(proposal) < COMPILED_MAX_ROWS:
                # Not booked as _forward books a pass: generated tokens are not kept, so
                # nothing reads their slots' positions or the pass's logits afterwards.
                step = bound([token, *proposal], slot, all_logits=True)
            else:
                step = self._forward([token, *proposal], slot, keep_logits=False, all_logits=True)
            # Row by row, and only the rows kept (see most_likely); the row after the kept
            # ones gives the next token.
            accepted = 0
            context = self._ids + generated if reads_ids else []
            chosen = [choose(step[0], context, allowed)]
            while accepted < len(proposal) and chosen[-1][0] == proposal[accepted]:
                if reads_ids:
                    context.append(proposal[accepted])
                accepted += 1
                chosen.append(choose(step[accepted], context, allowed))
            if draft is not None and proposal:
                draft.record(accepted, len(proposal))
            for index in range(accepted):
                # Their keys and values are already in place; the rejected ones are
                # overwritten by the next pass.
                drafted, drafted_log_prob = chosen[index]
                generated.append(drafted)
                if not on_token(drafted, drafted_log_prob):
                    return generated
                if len(generated) >= limit:
                    return generated
            token, log_prob = chosen[accepted]

    # ---- internals -----------------------------------------------------------------------

    def _encode_at(self, slot: int, ids: list[int]) -> None:
        """Encode ids at slots slot.. and keep them, in prefill chunks."""
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start : start + PREFILL_CHUNK]
            self._forward(chunk, slot + start, keep_logits=False)
            self._ids = self._ids[: slot + start] + chunk
            if self._exact >= slot + start:
                self._exact = len(self._ids)
        if ids:
            self._next_logits = self._last_forward_logits

    @torch.inference_mode()
    def _forward(
        self, ids: list[int], slot: int, *, keep_logits: bool, all_logits: bool = False
    ) -> torch.Tensor:
        """Run ids at positions slot.. writing K/V at those slots; returns fp32 logits."""
        timed = len(ids) >= RATE_MIN_TOKENS
        started = time.perf_counter() if timed else 0.0
        if self._decode_graph is not None and len(ids) == 1:
            slab = self._slab
            input_ids = torch.tensor(ids, device=self.device)
            logits = self._decode_graph(input_ids, slot, slab.keys, slab.values).float()
        elif self._lean_step is not None:
            slab = self._slab
            # A list: the compiled pass takes the ids as they are, without a tensor round trip.
            logits = self._lean_step(ids, slot, slab.keys, slab.values, all_logits=all_logits)
            logits = logits.float()
        else:
            input_ids = torch.tensor(ids, device=self.device)
            logits = self._hf_forward(input_ids, slot, all_logits=all_logits)
        torch.arange(slot, slot + len(ids), out=self._positions[slot : slot + len(ids)])
        self._last_forward_logits = logits[-1]
        if timed:
            self._time_pass(len(ids), started)
        return logits

    def _time_pass(self, tokens: int, started: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        rate = (time.perf_counter() - started) / tokens
        # Halfway to each new pass: follows a machine that slows under load within a few passes,
        # while one preempted pass moves the rate only halfway.
        previous = self._seconds_per_token
        self._seconds_per_token = rate if previous is None else 0.5 * (previous + rate)

    def _bound_pass(self) -> BoundPass | None:
        """The compiled pass bound to today's slab, for a decode loop (one-token steps and
        verify passes): built per generate() call and after the slab grows, since the weights
        may have moved between calls. None where it is not the path a pass takes."""
        if self._lean_step is None or self._decode_graph is not None:
            return None
        return self._lean_step.bound_pass(self._slab.keys, self._slab.values)

    def _forward_scattered(self, ids: list[int], slots: list[int]) -> torch.Tensor:
        """Run ids at increasing, not necessarily adjacent slots (the lean step only); returns
        the last one's fp32 logits."""
        assert self._lean_step is not None
        at = torch.tensor(slots, dtype=torch.long)
        slab = self._slab
        logits = self._lean_step(
            torch.tensor(ids, device=self.device), at.to(self.device), slab.keys, slab.values
        ).float()
        self._positions[at] = at
        self._last_forward_logits = logits[-1]
        return logits[-1]

    def _hf_forward(self, input_ids: torch.Tensor, slot: int, *, all_logits: bool) -> torch.Tensor:
        self._slab.write_at = slot
        positions = torch.arange(slot, slot + len(input_ids), device=self.device)
        try:
            output = self.model(
                input_ids=input_ids[None],
                position_ids=positions[None],
                cache=self._hf_cache,
                use_cache=True,
                logits_to_keep=0 if all_logits else 1,
            )
        finally:
            self._slab.write_at = 0
        return output.logits[0].float()

    def _lean_step_for(
        self,
        forward: ForwardPath,
        blas_products: bool | None,
        onednn_products: bool | None,
        compiled_step: bool | None,
    ) -> LlamaStep | None:
        if forward == "hf":
            return None
        try:
            return LlamaStep(
                self.model,
                blas_products=blas_products,
                onednn_products=onednn_products,
                compiled_step=compiled_step,
            )
        except UnsupportedStepError:
            if forward == "lean":
                raise
            return None

    def _checked_ids(self, ids: Sequence[int] | torch.Tensor, what: str) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{what} must be an integer tensor, got dtype {ids.dtype}")
            if ids.device != self.device and ids.device.type != "cpu":
                raise ValueError(f"{what} are on {ids.device}, the cache is on {self.device}")
            if ids.dim() != 1:
                raise ValueError(f"{what} must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        vocab = self.model.config.vocab_size
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab:
                raise ValueError(f"{what}: {i!r} is not a token id in 0..{vocab - 1}")
            out.append(i)
        return out

    def _check_capacity(self, needed: int) -> None:
        if self.max_capacity is not None and needed > self.max_capacity:
            raise ValueError(
                f"the edit needs {needed} tokens but the cache holds at most {self.max_capacity}"
            )

    def _ensure_capacity(self, needed: int, keep: int | None = None) -> bool:
        """Grow the slab to hold `needed` slots, keeping the first `keep` (all the cached
        ones by default); whether it grew."""
        if needed <= self._slab.capacity:
            return False
        self._grow(needed, keep)
        return True

    @torch.inference_mode(False)
    def _grow(self, needed: int, keep: int | None) -> None:
        keep = len(self._ids) if keep is None else keep
        capacity = self._slab.capacity
        while capacity < needed:
            capacity *= 2
        if self.max_capacity is not None:
            capacity = min(capacity, self.max_capacity)
        self._slab.grow(capacity, keep=keep)
        if self._decode_graph is not None:
            # It holds the old slab; the next one-token step records on the new one.
            self._decode_graph.release()
        positions = torch.zeros(capacity, dtype=torch.long)
        positions[:keep] = self._positions[:keep]
        self._positions = positions

    def _record(
        self, strategy: str, encoded: int, reused: int, moved: int, started: float
    ) -> EditStats:
        stats = EditStats(strategy, encoded, reused, moved, time.perf_counter() - started)
        self.last_edit = stats
        self.total_encoded += encoded
        self.total_reused += reused
        return stats


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def _model_greedy(
    logits: torch.Tensor, ids: Sequence[int], allowed: torch.Tensor | None
) -> tuple[int, float]:
    """The model's most likely token (of the allowed ones) and its log-probability."""
    token = most_likely(logits, allowed)
    return token, _log_prob(logits, token)


def most_likely(logits: torch.Tensor, allowed: torch.Tensor | None = None) -> int:
    """The most likely token of a logits row [vocab] (of the allowed ones, if given).

    On CPU through numpy: torch reduces a row of more than 32k values on its OpenMP team, whose
    workers must first wake, or spin afterwards (libgomp's default policy, which the server
    keeps for small models) on the core the compiled pass's pool needs next; torch.argmax over
    the 0.5B shape's 151,936 logits took 180 µs against numpy's 14 (2 threads). Verify passes
    that reduced all their rows at once ran at 0.54x plain decoding that way."""
    if allowed is not None and allowed.numel() == 0:
        raise ValueError("the token constraint allows no token at all")
    if logits.device.type == "cpu":
        row = logits.numpy()
        if allowed is None:
            return int(row.argmax())
        choices = allowed.numpy()
        return int(choices[row[choices].argmax()])
    if allowed is None:
        return int(torch.argmax(logits))
    return int(allowed[torch.argmax(logits[allowed])])


def _log_prob(logits: torch.Tensor, token: int) -> float:
    """log softmax(logits)[token] for a logits row [vocab], without writing out the whole
    distribution; on CPU through numpy, as for most_likely."""
    if logits.device.type != "cpu":
        return float(torch.log_softmax(logits.float(), dim=-1)[token])
    row = logits.numpy()
    top = float(row.max())
    return float(row[token]) - top - math.log(float(np.exp(row - top).sum(dtype=np.float64)))
