"""pie-lsp side by side with llama.cpp: same weights, same token ids, same threads, one run.

    pip install -e ".[peer]"     # llama-cpp-python 0.3.36 (builds llama.cpp: 6-15 min) and gguf
    python -m benchmarks.bench_llamacpp                          # 0.5B shape, 2k tokens, 3 repeats
    python -m benchmarks.bench_llamacpp --shape '{"num_hidden_layers": 2}' --repeats 1   # smoke
    python -m benchmarks.bench_llamacpp --model default          # the shipped small Llama

Needs the `peer` extra and is not run in CI. Importing this module needs neither llama_cpp nor
gguf: both are imported inside the functions that use them.

1. The model: Qwen2.5-Coder-0.5B's shape with random float32 weights (`--shape` overrides parts
   of it), or `--model default`. It is written to GGUF f32 with `gguf.GGUFWriter`: tensors and
   hyperparameters by hand, tokenizer model "none" (llama.cpp then makes `vocab_size` dummy
   tokens; every run feeds token ids, so no tokenizer is needed). Llama q/k rows are permuted as
   llama.cpp's converter does; qwen2 needs no permutation.
2. Logits check before any timing: llama.cpp's last-token logits (flash attention off, f32 KV
   cache) against a plain transformers forward on the same ids. The run stops with exit status 3
   when max |difference| > 2e-4 × max(1, max |logit|).
3. The machine: CPU model and flags, threads (the same for torch and llama.cpp), and the
   weight-read floor of one decode step measured in the same run: bytes of weights one step
   reads over a streaming-read bandwidth (torch.sum over a 1 GiB float32 buffer at the same
   thread count, best of several reads).
4. Edit, then next-token logits, on a `--tokens` document (default 2048): a 12-token line
   inserted and one deleted at token 64. llama.cpp: full re-encode; prefix reuse (keep the
   common prefix, seq_rm the rest, decode the new tail); for the deletion llama-server's
   cache reuse (seq_rm the span, seq_add the suffix by −Δ, re-decode the last token); for the
   insertion PIE through llama.cpp's API (seq_add the suffix by +Δ, decode the new tokens at
   their middle positions in a helper sequence that shares the prefix, copy them into the main
   sequence, re-decode the last token). pie-lsp: `full`, `prefix`, `pie` through `EditableCache`.
   Decode: ms per token from the 2k cache for both, each also as a multiple of the floor.
5. End to end, keystroke → 24-token ghost text, in the FIM layout llama.vim sends to
   llama-server: [FIM_PRE] prefix [FIM_SUF] suffix [FIM_MID], the cursor 3/4 into the document
   (llama-server's 3:1 prefix:suffix split), the cache holding the previous completion. For
   llama-server, its prompt-cache algorithm (common prefix, then `--cache-reuse` chunk shifting,
   then at least one token re-decoded) is replayed through the same API calls the server makes.
   For pie-lsp, `EditableCache` runs the calls `CompletionEngine.complete` makes under default
   settings: `apply_edits` with `pie`, the stale-budget refresh, then `generate`.
   Cases: (a) a far edit (a line inserted, or deleted, at token 64), (b) one typed token at the
   cursor.

Run with interleaving: each repetition alternates the engines inside every case and reverses
their order on the next one; median and min over `--repeats`. Only ratios measured side by side
in one run mean anything, together with the floor measured in that run.

Both engines use libgomp, whose threads spin at every barrier by default. On a machine where
other processes compete for the cores, a spinning thread waits for a preempted partner at each
of llama.cpp's hundreds of barriers per step (seen here: 290 ms instead of 4.5 ms for a 2-layer
step). `OMP_WAIT_POLICY=PASSIVE` in the environment (it must be set before torch loads, and it
applies to both engines) is also what pie-lsp's server sets for a model this size, since its BLAS
decode needs sleeping workers (cache_engine/model/cpu_threading.py); on a quiet machine it slows
llama.cpp's decode by about 1.45x, so `benchmarks/bench_decode_peer.py` times decoding with each
engine under each policy in its own process. The JSON records the policy and the load average.

Simplifications (also listed in the JSON): token level only (no text, tokenizer, HTTP, JSON or
debounce on either side); greedy decoding of exactly 24 tokens on both sides (no sampler chain,
no stop rules, no speculative drafting: random weights make drafts meaningless); one typed
token stands for one typed character; no llama.vim extra-context chunks or repo/file markers;
llama-server would trim the suffix to n_batch/4 − 2 − (current line) tokens, here both engines
get the same whole-document prompt; the typed token never matches the shown suggestion, so
neither client's cached-completion shortcut applies.

Results go to benchmarks/results/llamacpp.json; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, document_ids, shaped_model
from benchmarks.machine import load_average, machine_record, streaming_read_bandwidth
from cache_engine.completion.prompt_layout import FimMarkers, assemble
from cache_engine.completion.settings import CompletionSettings
from cache_engine.completion.speculation import RecalledDraft
from cache_engine.completion.stale_refresh import refresh_after_edits, refresh_before_decoding
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.token_edits import TokenEdit, apply_to_ids
from cache_engine.model.loading import load_model

RESULTS = Path(__file__).parent / "results" / "llamacpp.json"

# Qwen2.5-Coder's <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|> ids.
QWEN_FIM_MARKERS = FimMarkers(prefix=151659, suffix=151661, middle=151660)

EDIT_AT_TOKEN = 64
GHOST_TEXT_TOKENS = 24
DECODE_STEPS = 16
# llama.vim's README and llama-server's --fim-qwen-*-default presets use --cache-reuse 256.
LLAMA_SERVER_CACHE_REUSE = 256
LOGITS_RELATIVE_TOLERANCE = 2e-4
# The helper sequence that holds the prefix while PIE decodes inserted tokens at mid positions.
MAIN_SEQUENCE = 0
HELPER_SEQUENCE = 1
LLAMA_CPP_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
GGML_LOG_LEVEL_ERROR = 4

SIMPLIFICATIONS = [
    "token level only: no text diffing, tokenizer, HTTP, JSON or debounce on either side",
    "greedy decoding of exactly 24 tokens on both sides: no sampler chain, stop rules or "
    "drafts from the document (random weights make n-gram drafts meaningless); one pie-lsp row "
    "per far edit drafts from the ghost text made at the cursor before the edit, as "
    "CompletionEngine does when asked at the same place again (completion/recall.py)",
    "one typed character is one inserted token at the cursor",
    "no llama.vim extra-context chunks and no <|repo_name|>/<|file_sep|> markers before [FIM_PRE]",
    "both engines get the same whole-document prompt; llama-server would trim the suffix to "
    "n_batch/4 - 2 - (current line) tokens and the prefix to 3/4 n_batch",
    "the typed token never matches the suggestion shown, so neither llama.vim's completion "
    "cache nor pie-lsp's forward typing answers without the model; llama.vim's cache is keyed "
    "on the 256 lines above the cursor (n_prefix), which hold the far edit, so it misses there",
    "KV cache in f32 on both sides (llama-server's default is f16) so that logits can be "
    "checked and the caches read the same bytes",
    "llama.cpp's flash attention is off in the timed runs unless --flash-attn says otherwise "
    "(it is the configuration whose logits were checked; llama-server's default 'auto' turns "
    "it on on CPU)",
    "pie-lsp's text-level steps (token healing, confidence gates, stop rules) are not mirrored; "
    "its cache calls are those of CompletionEngine with default settings",
]


# ---- machine -------------------------------------------------------------------------------


def weight_bytes_per_decode_step(model: torch.nn.Module) -> int:
    """Weight bytes one decode step reads: every matrix once, the embedding as one row unless
    it is also the output head (tied), which reads it whole."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied counted once
    embedding = model.get_input_embeddings().weight
    row = embedding.shape[1] * embedding.element_size()
    if model.config.tie_word_embeddings:
        return total + row
    return total - embedding.numel() * embedding.element_size() + row


# ---- GGUF ----------------------------------------------------------------------------------


def _permute_for_llama_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's llama graph rotates adjacent pairs; HF Llama rotates halves. Reorder the rows
    of q/k so both compute the same thing (convert_hf_to_gguf's `permute`)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(model: torch.nn.Module, path: Path) -> None:
    import gguf

    config = model.config
    architecture = config.model_type
    if architecture not in ("qwen2", "llama"):
        raise SystemExit(f"GGUF writing is only done for qwen2 and llama, not {architecture}")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"only default RoPE is written to GGUF, not {rope.get('rope_type')}")
    heads = config.num_attention_heads
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"pie-lsp bench {architecture}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # "none": llama.cpp skips the tokenizer and makes vocab_size dummy tokens.
    writer.add_tokenizer_model("none")
    writer.add_vocab_size(config.vocab_size)

    def tensor(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).contiguous().numpy()

    writer.add_tensor("token_embd.weight", tensor(model.model.embed_tokens.weight))
    writer.add_tensor("output_norm.weight", tensor(model.model.norm.weight))
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", tensor(model.lm_head.weight))
    for index, layer in enumerate(model.model.layers):
        attention, mlp = layer.self_attn, layer.mlp
        q, k = tensor(attention.q_proj.weight), tensor(attention.k_proj.weight)
        if architecture == "llama":
            q, k = _permute_for_llama_rope(q, heads), _permute_for_llama_rope(k, kv_heads)
        block = f"blk.{index}"
        writer.add_tensor(f"{block}.attn_norm.weight", tensor(layer.input_layernorm.weight))
        writer.add_tensor(f"{block}.attn_q.weight", q)
        writer.add_tensor(f"{block}.attn_k.weight", k)
        writer.add_tensor(f"{block}.attn_v.weight", tensor(attention.v_proj.weight))
        for name, projection in (("q", attention.q_proj), ("k", attention.k_proj)):
            if projection.bias is not None:
                bias = tensor(projection.bias)
                if architecture == "llama":
                    bias = _permute_for_llama_rope(bias, heads if name == "q" else kv_heads)
                writer.add_tensor(f"{block}.attn_{name}.bias", bias)
        if attention.v_proj.bias is not None:
            writer.add_tensor(f"{block}.attn_v.bias", tensor(attention.v_proj.bias))
        writer.add_tensor(f"{block}.attn_output.weight", tensor(attention.o_proj.weight))
        writer.add_tensor(f"{block}.ffn_norm.weight", tensor(layer.post_attention_layernorm.weight))
        writer.add_tensor(f"{block}.ffn_gate.weight", tensor(mlp.gate_proj.weight))
        writer.add_tensor(f"{block}.ffn_up.weight", tensor(mlp.up_proj.weight))
        writer.add_tensor(f"{block}.ffn_down.weight", tensor(mlp.down_proj.weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---- llama.cpp -----------------------------------------------------------------------------


def _llama_cpp() -> Any:
    try:
        import llama_cpp.llama_cpp as llama_cpp_api
    except ImportError as error:
        raise SystemExit(
            'llama_cpp is not installed: pip install -e ".[peer]" (builds llama.cpp from source)'
        ) from error
    return llama_cpp_api


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _llama_log_errors_only(level: int, text: bytes, _user_data: int) -> None:
    if level == GGML_LOG_LEVEL_ERROR:
        sys.stderr.write(text.decode(errors="replace"))


class LlamaCppModel:
    """A GGUF model loaded by llama.cpp (CPU only)."""

    def __init__(self, path: Path):
        api = _llama_cpp()
        api.llama_log_set(_llama_log_errors_only, None)
        api.llama_backend_init()
        params = api.llama_model_default_params()
        params.n_gpu_layers = 0
        self.api = api
        self.handle = api.llama_model_load_from_file(str(path).encode(), params)
        if not self.handle:
            raise SystemExit(f"llama.cpp could not load {path}")
        self.n_vocab = api.llama_vocab_n_tokens(api.llama_model_get_vocab(self.handle))

    def system_info(self) -> str:
        return self.api.llama_print_system_info().decode().strip()

    def close(self) -> None:
        self.api.llama_model_free(self.handle)


class LlamaCppContext:
    """One llama.cpp context driven through its low-level API, as llama-server drives a slot.

    The KV cache is unified (one buffer for all sequences), so seq_cp shares cells instead of
    copying them; that is what lets PIE decode inserted tokens in a helper sequence.
    """

    def __init__(
        self,
        model: LlamaCppModel,
        *,
        n_ctx: int,
        threads: int,
        flash_attn: str,
        n_batch: int,
        n_ubatch: int,
    ):
        api = model.api
        params = api.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch
        params.n_seq_max = 2
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = LLAMA_CPP_FLASH_ATTN[flash_attn]
        params.type_k = api.GGML_TYPE_F32
        params.type_v = api.GGML_TYPE_F32
        params.kv_unified = True
        params.no_perf = True
        self.api = api
        self.n_vocab = model.n_vocab
        self.n_batch = n_batch
        self.handle = api.llama_init_from_model(model.handle, params)
        if not self.handle:
            raise SystemExit("llama.cpp could not create a context")
        self.memory = api.llama_get_memory(self.handle)
        self.batch = api.llama_batch_init(n_batch, 0, 2)
        self.tokens_decoded = 0

    def close(self) -> None:
        self.api.llama_batch_free(self.batch)
        self.api.llama_free(self.handle)

    # Memory operations, named as in llama.h; positions [p0, p1), p1 < 0 meaning to the end.
    def seq_rm(self, seq: int, p0: int, p1: int) -> None:
        if not self.api.llama_memory_seq_rm(self.memory, seq, p0, p1):
            raise RuntimeError(f"llama_memory_seq_rm({seq}, {p0}, {p1}) failed")

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self.api.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    def seq_cp(self, source: int, destination: int, p0: int, p1: int) -> None:
        self.api.llama_memory_seq_cp(self.memory, source, destination, p0, p1)

    def clear(self) -> None:
        self.api.llama_memory_clear(self.memory, True)

    def decode(
        self, ids: Sequence[int], first_position: int, *, seq: int = MAIN_SEQUENCE, logits=True
    ) -> np.ndarray | None:
        """Decode ids at first_position.. in `seq`; returns the last token's logits if asked."""
        batch = self.batch
        for offset in range(0, len(ids), self.n_batch):
            chunk = ids[offset : offset + self.n_batch]
            batch.n_tokens = len(chunk)
            for k, token in enumerate(chunk):
                batch.token[k] = token
                batch.pos[k] = first_position + offset + k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = seq
                batch.logits[k] = 0
            last_chunk = offset + self.n_batch >= len(ids)
            if logits and last_chunk:
                batch.logits[len(chunk) - 1] = 1
            status = self.api.llama_decode(self.handle, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}")
        self.tokens_decoded += len(ids)
        if not logits:
            return None
        pointer = self.api.llama_get_logits_ith(self.handle, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def generate(self, logits: np.ndarray, first_position: int, count: int) -> list[int]:
        """Greedy decoding: `count` tokens, the first from `logits`, count − 1 decode steps."""
        token = int(np.argmax(logits))
        generated = [token]
        position = first_position
        while len(generated) < count:
            step_logits = self.decode([token], position)
            assert step_logits is not None
            position += 1
            token = int(np.argmax(step_logits))
            generated.append(token)
        return generated

    def save_main_sequence(self) -> ctypes.Array:
        size = self.api.llama_state_seq_get_size(self.handle, MAIN_SEQUENCE)
        state = (ctypes.c_uint8 * size)()
        if self.api.llama_state_seq_get_data(self.handle, state, size, MAIN_SEQUENCE) == 0:
            raise RuntimeError("llama_state_seq_get_data failed")
        return state

    def restore_main_sequence(self, state: ctypes.Array) -> None:
        # An empty cache first, so the sequence lands in contiguous cells like a fresh prefill.
        self.clear()
        if self.api.llama_state_seq_set_data(self.handle, state, len(state), MAIN_SEQUENCE) == 0:
            raise RuntimeError("llama_state_seq_set_data failed")


@dataclass(frozen=True)
class CachePlan:
    """What llama-server does to its slot's cache to serve a new prompt."""

    keep: int  # tokens kept (common prefix plus reused chunks), i.e. the server's n_past
    # Per reused chunk (prompt position, cached start, cached end): the server removes cached
    # [prompt position, cached start) and shifts cached [start, end) left onto the prompt position.
    shifts: tuple[tuple[int, int, int], ...]

    @property
    def reused_chunks(self) -> int:
        return len(self.shifts)


def llama_server_cache_plan(
    cached: Sequence[int], prompt: Sequence[int], cache_reuse: int
) -> CachePlan:
    """llama-server's prompt cache (tools/server/server-context.cpp): keep the common prefix,
    then with --cache-reuse N shift every later cached chunk of ≥ N matching tokens left into
    place (never right: after an insertion nothing matches), and re-decode at least one token."""
    keep = 0
    while keep < min(len(cached), len(prompt)) and cached[keep] == prompt[keep]:
        keep += 1
    shifts: list[tuple[int, int, int]] = []
    if cache_reuse > 0:
        head_cached = head_prompt = keep
        while head_cached < len(cached) and head_prompt < len(prompt):
            matched = 0
            while (
                head_cached + matched < len(cached)
                and head_prompt + matched < len(prompt)
                and cached[head_cached + matched] == prompt[head_prompt + matched]
            ):
                matched += 1
            if matched >= cache_reuse:
                shifts.append((head_prompt, head_cached, head_cached + matched))
                head_cached += matched
                head_prompt += matched
                keep += matched
            else:
                head_cached += 1
    if keep == len(prompt):
        keep -= 1  # the server evaluates at least one token to get logits
    return CachePlan(keep, tuple(shifts))


def apply_llama_server_plan(
    context: LlamaCppContext, plan: CachePlan, prompt: Sequence[int]
) -> np.ndarray:
    for prompt_position, cached_start, cached_end in plan.shifts:
        context.seq_rm(MAIN_SEQUENCE, prompt_position, cached_start)
        context.seq_add(MAIN_SEQUENCE, cached_start, cached_end, prompt_position - cached_start)
    context.seq_rm(MAIN_SEQUENCE, plan.keep, -1)
    logits = context.decode(prompt[plan.keep :], plan.keep)
    assert logits is not None
    return logits


def apply_llama_cpp_pie(
    context: LlamaCppContext, edit: TokenEdit, new_ids: Sequence[int]
) -> np.ndarray:
    """PIE through llama.cpp's API: move the suffix by Δ (llama.cpp re-rotates its keys at the
    next decode), decode the new tokens at their middle positions, re-decode the last token."""
    start, end, inserted = edit.start, edit.end, list(edit.new_ids)
    # Drop what lies past the edited sequence (the previous completion's tokens).
    context.seq_rm(MAIN_SEQUENCE, len(new_ids) - edit.delta, -1)
    if end > start:
        context.seq_rm(MAIN_SEQUENCE, start, end)
    if inserted:
        # llama_decode wants each sequence's positions to continue its last one, so the new
        # tokens go to a helper sequence that holds only the prefix.
        context.seq_cp(MAIN_SEQUENCE, HELPER_SEQUENCE, 0, start)
    if edit.delta:
        context.seq_add(MAIN_SEQUENCE, end, -1, edit.delta)
    if inserted:
        context.decode(inserted, start, seq=HELPER_SEQUENCE, logits=False)
        context.seq_cp(HELPER_SEQUENCE, MAIN_SEQUENCE, start, start + len(inserted))
        context.seq_rm(HELPER_SEQUENCE, -1, -1)
    last = len(new_ids) - 1
    context.seq_rm(MAIN_SEQUENCE, last, -1)
    logits = context.decode([new_ids[last]], last)
    assert logits is not None
    return logits


# ---- pie-lsp -------------------------------------------------------------------------------


def _keep_generating(*_token_and_score: object) -> bool:
    """`EditableCache.generate`'s on_token that never stops (whatever it is passed)."""
    return True


class TokenCounter:
    """Counts the tokens a cache runs through the model, so pie-lsp's rows report what they ran.

    Every model pass of `EditableCache` (edits, refreshes, the re-fed last token, decoding) goes
    through its `_forward`, or `_forward_scattered` when an edit and the re-fed last token share
    a pass, whichever forward path it uses; the count wraps those methods on the benchmark's own
    clones.
    """

    def __init__(self) -> None:
        self.tokens = 0

    def attach(self, cache: EditableCache) -> EditableCache:
        for name in ("_forward", "_forward_scattered"):
            setattr(cache, name, self._counting(getattr(cache, name)))
        return cache

    def _counting(self, forward: Any) -> Any:
        def counted(ids: list[int], *args: Any, **kwargs: Any) -> torch.Tensor:
            self.tokens += len(ids)
            return forward(ids, *args, **kwargs)

        return counted


def pie_lsp_sync(cache: EditableCache, edit: TokenEdit, settings: CompletionSettings) -> np.ndarray:
    """The cache calls `CompletionEngine.complete` makes before decoding (`_apply`, then the
    refreshes of `stale_refresh`), at the token level; returns the next-token logits that
    `generate` then starts from."""
    cache.apply_edits([edit], strategy=settings.strategy)
    if settings.strategy == "pie" and settings.refresh_after_edit:
        refresh_after_edits(cache, [edit], settings.refresh_after_edit)
    refresh_before_decoding(cache, settings)
    return cache.next_token_logits().numpy().copy()


# ---- measuring -----------------------------------------------------------------------------


@dataclass
class Outcome:
    logits: np.ndarray | None
    tokens_run: int  # tokens through the model before decoding the ghost text
    generated: list[int] = field(default_factory=list)
    draft: RecalledDraft | None = None  # what drafted while decoding, with its counts


@dataclass
class Case:
    """One timed operation; `prepare` restores its engine's state untimed and returns the run."""

    section: str
    scenario: str
    method: str
    engine: str
    prepare: Callable[[], Callable[[], Outcome]]
    per: int = 1  # divide each time by this (decode steps)
    seconds: list[float] = field(default_factory=list)
    first: Outcome | None = None

    def run_once(self) -> None:
        timed = self.prepare()
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            outcome = timed()
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
        self.seconds.append(elapsed / self.per)
        if self.first is None:
            self.first = outcome

    def summary(self) -> dict[str, Any]:
        assert self.first is not None
        return {
            "section": self.section,
            "scenario": self.scenario,
            "method": self.method,
            "engine": self.engine,
            "median_ms": statistics.median(self.seconds) * 1000,
            "min_ms": min(self.seconds) * 1000,
            "samples_ms": [s * 1000 for s in self.seconds],
            "tokens_run": self.first.tokens_run,
            **(
                {
                    "drafted_tokens": self.first.draft.drafted,
                    "kept_tokens": self.first.draft.accepted,
                }
                if self.first.draft is not None
                else {}
            ),
        }


def run_interleaved(groups: list[list[Case]], repeats: int) -> None:
    for repeat in range(repeats):
        for group in groups:
            # Alternate which engine goes first, so a drift in machine load hits both alike.
            ordered = group if repeat % 2 == 0 else list(reversed(group))
            for case in ordered:
                case.run_once()
                print(
                    f"  [{repeat + 1}/{repeats}] {case.section} | {case.scenario} | "
                    f"{case.engine} {case.method}: {case.seconds[-1] * 1000:.1f} ms",
                    flush=True,
                )


def max_abs_difference(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# ---- the benchmark -------------------------------------------------------------------------


@dataclass
class Workload:
    document: list[int]
    line: list[int]
    typed: int
    markers: FimMarkers
    cursor: int  # document token index of the cursor

    def prompt(self) -> list[int]:
        return assemble(
            "psm", self.markers, self.document[: self.cursor], self.document[self.cursor :]
        )

    def document_edits(self) -> dict[str, TokenEdit]:
        at = EDIT_AT_TOKEN
        return {
            f"insert a {len(self.line)}-token line at token {at}": TokenEdit.insert(at, self.line),
            f"delete a {len(self.line)}-token line at token {at}": TokenEdit.delete(
                at, at + len(self.line)
            ),
        }

    def prompt_edits(self) -> dict[str, TokenEdit]:
        # The document starts after [FIM_PRE] in the psm prompt.
        at = 1 + EDIT_AT_TOKEN
        line = len(self.line)
        return {
            f"(a) far edit: line inserted at token {EDIT_AT_TOKEN}": TokenEdit.insert(
                at, self.line
            ),
            f"(a) far edit: line deleted at token {EDIT_AT_TOKEN}": TokenEdit.delete(at, at + line),
            "(b) one token typed at the cursor": TokenEdit.insert(1 + self.cursor, [self.typed]),
        }


def build_workload(name: str, model: torch.nn.Module, tokenizer: Any, tokens: int) -> Workload:
    document, line = document_ids(tokenizer, model.config.vocab_size, tokens, seed=tokens)
    if len(document) < tokens:
        raise SystemExit(f"only {len(document)} tokens of text for a {tokens}-token document")
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        markers = FimMarkers(
            vocab["<|fim_prefix|>"], vocab["<|fim_suffix|>"], vocab["<|fim_middle|>"]
        )
        typed = tokenizer("x", add_special_tokens=False)["input_ids"][0]
    else:
        vocab_size = model.config.vocab_size
        markers = QWEN_FIM_MARKERS
        if max(markers.prefix, markers.suffix, markers.middle) >= vocab_size:  # a smaller --shape
            markers = FimMarkers(vocab_size - 3, vocab_size - 2, vocab_size - 1)
        typed = random.Random(name).randrange(vocab_size)
    # llama-server keeps prefix:suffix at 3:1 of its batch; put the cursor where that splits.
    return Workload(document, line, typed, markers, cursor=tokens - tokens // 4)


def logits_check(
    model: torch.nn.Module, model_gguf: LlamaCppModel, ids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """llama.cpp (flash attention off) against a plain transformers forward on the same ids."""
    with torch.inference_mode():
        reference = (
            model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float().numpy()
        )
    context = LlamaCppContext(
        model_gguf,
        n_ctx=_context_size(len(ids)),
        threads=args.threads,
        flash_attn="off",
        n_batch=args.n_batch,
        n_ubatch=args.n_ubatch,
    )
    try:
        logits = context.decode(ids, 0)
    finally:
        context.close()
    assert logits is not None
    scale = float(np.max(np.abs(reference)))
    difference = max_abs_difference(logits, reference)
    assert difference is not None
    tolerance = LOGITS_RELATIVE_TOLERANCE * max(1.0, scale)
    return {
        "tokens": len(ids),
        "flash_attention": "off",
        "max_abs_difference": difference,
        "max_abs_reference_logit": scale,
        "tolerance": tolerance,
        "tolerance_rule": f"{LOGITS_RELATIVE_TOLERANCE:g} * max(1, max |reference logit|)",
        "same_argmax": int(np.argmax(logits)) == int(np.argmax(reference)),
        "passed": difference <= tolerance,
    }


def _context_size(tokens: int) -> int:
    # llama.cpp's K-shift pass rotates every cell of the cache, so n_ctx stays close to the
    # prompt (as `-c` would be set for a 2k prompt) instead of the model's 32k.
    needed = tokens + 64 + GHOST_TEXT_TOKENS + DECODE_STEPS
    return (needed + 255) // 256 * 256


class CaseBuilder:
    """Makes timed cases for both engines over base states encoded once."""

    def __init__(
        self, model: torch.nn.Module, context: LlamaCppContext, counter: TokenCounter
    ) -> None:
        self.model = model
        self.context = context
        self.counter = counter

    def llama(
        self,
        section: str,
        scenario: str,
        method: str,
        state: ctypes.Array,
        run: Callable[[], np.ndarray | None],
        *,
        generate_from: int | None = None,
        per: int = 1,
    ) -> Case:
        """`run` edits the restored cache and returns next-token logits; with `generate_from`
        (the prompt length) the ghost text is decoded after it."""
        context = self.context

        def timed() -> Outcome:
            before = context.tokens_decoded
            logits = run()
            tokens_run = context.tokens_decoded - before
            generated: list[int] = []
            if generate_from is not None:
                assert logits is not None
                generated = context.generate(logits, generate_from, GHOST_TEXT_TOKENS)
            return Outcome(logits, tokens_run, generated)

        def prepare() -> Callable[[], Outcome]:
            context.restore_main_sequence(state)
            return timed

        return Case(section, scenario, method, "llama.cpp", prepare, per)

    def pie_lsp(
        self,
        section: str,
        scenario: str,
        method: str,
        base: EditableCache,
        strategy: str,
        run: Callable[[EditableCache], np.ndarray | None],
        *,
        generate: bool = False,
        draft: Callable[[EditableCache], RecalledDraft] | None = None,
        per: int = 1,
    ) -> Case:
        """`run` edits a clone of `base` and returns next-token logits; with `generate` the
        ghost text is decoded after it, verifying `draft(cache)`'s drafts if given."""
        counter = self.counter

        def prepare() -> Callable[[], Outcome]:
            cache = counter.attach(base.clone(strategy=strategy))  # type: ignore[arg-type]

            def timed() -> Outcome:
                before = counter.tokens
                logits = run(cache)
                tokens_run = counter.tokens - before
                drafter = draft(cache) if generate and draft is not None else None
                generated = (
                    cache.generate(GHOST_TEXT_TOKENS, _keep_generating, draft=drafter)
                    if generate
                    else []
                )
                return Outcome(logits, tokens_run, generated, drafter)

            return timed

        return Case(section, scenario, method, "pie-lsp", prepare, per)


def build_cases(
    builder: CaseBuilder, workload: Workload, settings: CompletionSettings
) -> tuple[list[list[Case]], dict[str, Any]]:
    model, context = builder.model, builder.context
    document = workload.document
    facts: dict[str, Any] = {}
    capacity = len(document) + 2 * len(workload.line) + GHOST_TEXT_TOKENS + DECODE_STEPS + 8

    # Base states, encoded once; every case restores (llama.cpp) or clones (pie-lsp) one untimed.
    context.clear()
    context.decode(document, 0)
    llama_document = context.save_main_sequence()
    pie_document = EditableCache(model, strategy="pie", initial_capacity=capacity)
    pie_document.reset(document)

    prompt = workload.prompt()
    context.clear()
    prompt_logits = context.decode(prompt, 0)
    assert prompt_logits is not None
    # The previous completion stays in the server's cache (its last token sampled, not decoded).
    previous = context.generate(prompt_logits, len(prompt), GHOST_TEXT_TOKENS)
    llama_cached = prompt + previous[:-1]
    llama_prompt = context.save_main_sequence()
    pie_prompt = EditableCache(model, strategy="pie", initial_capacity=capacity + len(prompt))
    pie_prompt.reset(prompt)
    # What pie-lsp showed at the cursor before the edit: CompletionEngine recalls it there.
    shown = pie_prompt.generate(GHOST_TEXT_TOKENS, _keep_generating)
    facts["document_tokens"] = len(document)
    facts["prompt_tokens"] = len(prompt)
    facts["cursor_document_token"] = workload.cursor
    facts["prompt_layout"] = "psm: [FIM_PRE] prefix [FIM_SUF] suffix [FIM_MID], both engines"

    def pie_edit_then_logits(edit: TokenEdit) -> Callable[[EditableCache], np.ndarray]:
        def run(cache: EditableCache) -> np.ndarray:
            cache.apply_edits([edit])
            return cache.next_token_logits().numpy().copy()

        return run

    groups: list[list[Case]] = []
    for scenario, edit in workload.document_edits().items():
        new_ids = apply_to_ids(document, [edit])
        at = edit.start
        pie_run = pie_edit_then_logits(edit)

        def llama_full(new_ids: list[int] = new_ids) -> np.ndarray | None:
            context.clear()
            return context.decode(new_ids, 0)

        def llama_prefix(new_ids: list[int] = new_ids, at: int = at) -> np.ndarray | None:
            context.seq_rm(MAIN_SEQUENCE, at, -1)
            return context.decode(new_ids[at:], at)

        method = "full re-encode"
        groups.append(
            [
                builder.llama("edit", scenario, method, llama_document, llama_full),
                builder.pie_lsp("edit", scenario, method, pie_document, "full", pie_run),
            ]
        )
        method = "keep common prefix"
        groups.append(
            [
                builder.llama("edit", scenario, method, llama_document, llama_prefix),
                builder.pie_lsp("edit", scenario, method, pie_document, "prefix", pie_run),
            ]
        )
        plan = llama_server_cache_plan(document, new_ids, LLAMA_SERVER_CACHE_REUSE)
        kind = "insertion" if edit.new_ids else "deletion"
        facts[f"llama_server_chunks_reused_after_{kind}"] = plan.reused_chunks
        if edit.new_ids:
            # llama-server's cache reuse shifts left only: after an insertion it reuses
            # nothing and equals prefix reuse, so PIE through the API stands in this row.
            def llama_shift(edit: TokenEdit = edit, new_ids: list[int] = new_ids) -> np.ndarray:
                return apply_llama_cpp_pie(context, edit, new_ids)

            llama_method = "shift suffix: PIE through llama.cpp's API"
        else:

            def llama_shift(plan: CachePlan = plan, new_ids: list[int] = new_ids) -> np.ndarray:
                return apply_llama_server_plan(context, plan, new_ids)

            llama_method = "shift suffix: llama-server cache reuse"
        groups.append(
            [
                builder.llama("edit", scenario, llama_method, llama_document, llama_shift),
                builder.pie_lsp(
                    "edit", scenario, "shift suffix: pie-lsp pie", pie_document, "pie", pie_run
                ),
            ]
        )

    def llama_decode_steps() -> None:
        token = document[-1]
        for step in range(DECODE_STEPS):
            logits = context.decode([token], len(document) + step)
            assert logits is not None
            token = int(np.argmax(logits))

    def pie_decode_steps(cache: EditableCache) -> None:
        # The first token comes from the logits reset left; the rest are DECODE_STEPS passes.
        cache.generate(DECODE_STEPS + 1, _keep_generating)

    scenario = f"one token from a {len(document)}-token cache"
    groups.append(
        [
            builder.llama(
                "decode",
                scenario,
                "greedy step",
                llama_document,
                llama_decode_steps,
                per=DECODE_STEPS,
            ),
            builder.pie_lsp(
                "decode",
                scenario,
                "greedy step",
                pie_document,
                "pie",
                pie_decode_steps,
                per=DECODE_STEPS,
            ),
        ]
    )

    no_refresh = replace(settings, stale_budget=-1)
    untimed_refresh = replace(settings, max_refresh_ms=0)
    facts["llama_server_plans"] = {}
    for scenario, edit in workload.prompt_edits().items():
        new_prompt = apply_to_ids(prompt, [edit])
        plan = llama_server_cache_plan(llama_cached, new_prompt, LLAMA_SERVER_CACHE_REUSE)
        facts["llama_server_plans"][scenario] = {
            "tokens_kept": plan.keep,
            "chunks_shifted": plan.reused_chunks,
            "tokens_decoded_before_ghost_text": len(new_prompt) - plan.keep,
        }

        def llama_server(plan: CachePlan = plan, new_prompt: list[int] = new_prompt) -> np.ndarray:
            return apply_llama_server_plan(context, plan, new_prompt)

        def llama_pie(edit: TokenEdit = edit, new_prompt: list[int] = new_prompt) -> np.ndarray:
            return apply_llama_cpp_pie(context, edit, new_prompt)

        def pie_lsp(settings: CompletionSettings, edit: TokenEdit = edit):
            return lambda cache: pie_lsp_sync(cache, edit, settings)

        section, length = "end_to_end", len(new_prompt)
        group = [
            builder.llama(
                section,
                scenario,
                f"llama-server (--cache-reuse {LLAMA_SERVER_CACHE_REUSE})",
                llama_prompt,
                llama_server,
                generate_from=length,
            )
        ]
        if edit.new_ids:
            group.append(
                builder.llama(
                    section,
                    scenario,
                    "llama.cpp + PIE through its API",
                    llama_prompt,
                    llama_pie,
                    generate_from=length,
                )
            )
        group.append(
            builder.pie_lsp(
                section,
                scenario,
                f"pie-lsp defaults (stale budget 0, ≤ 512 refreshed within "
                f"{settings.max_refresh_ms} ms)",
                pie_prompt,
                "pie",
                pie_lsp(settings),
                generate=True,
            )
        )
        group.append(
            builder.pie_lsp(
                section,
                scenario,
                "pie-lsp, no refresh (staleBudget −1)",
                pie_prompt,
                "pie",
                pie_lsp(no_refresh),
                generate=True,
            )
        )
        group.append(
            builder.pie_lsp(
                section,
                scenario,
                "pie-lsp, ≤ 512 refreshed without a time limit (maxRefreshMs 0)",
                pie_prompt,
                "pie",
                pie_lsp(untimed_refresh),
                generate=True,
            )
        )
        if scenario.startswith("(a) far edit"):  # the cursor's place is unchanged
            group.append(
                builder.pie_lsp(
                    section,
                    scenario,
                    "pie-lsp defaults, drafting only from the ghost text shown there before the edit",
                    pie_prompt,
                    "pie",
                    pie_lsp(settings),
                    generate=True,
                    draft=lambda cache: RecalledDraft(shown, len(cache)),
                )
            )
        groups.append(group)
    return groups, facts


# ---- report --------------------------------------------------------------------------------


def consistency(groups: list[list[Case]]) -> list[dict[str, Any]]:
    """Next-token logits of every llama.cpp row against every pie-lsp row of the same case
    (first repetition). Exact methods agree to rounding; PIE on llama.cpp, llama-server's shift
    and pie-lsp without refresh make the same stale approximation and agree too, which checks
    the llama.cpp PIE path; pie-lsp's refresh makes part of the suffix exact again."""
    rows = []
    for group in groups:
        with_logits = [c for c in group if c.first is not None and c.first.logits is not None]
        for llama in (c for c in with_logits if c.engine == "llama.cpp"):
            for pie in (c for c in with_logits if c.engine == "pie-lsp"):
                assert llama.first is not None and pie.first is not None
                rows.append(
                    {
                        "scenario": llama.scenario,
                        "llama_cpp": llama.method,
                        "pie_lsp": pie.method,
                        "max_abs_logit_difference": max_abs_difference(
                            llama.first.logits, pie.first.logits
                        ),
                        "same_ghost_text": (
                            llama.first.generated == pie.first.generated
                            if llama.first.generated
                            else None
                        ),
                    }
                )
    return rows


def _ms(case: Case) -> str:
    return f"{statistics.median(case.seconds) * 1000:.1f} ({min(case.seconds) * 1000:.1f})"


def markdown_tables(groups: list[list[Case]], floor_ms: float) -> str:
    lines = [
        "Edit, then next-token logits. ms: median (min); tokens run through the model.",
        "",
        "| edit | method | llama.cpp ms | tokens | pie-lsp ms | tokens | pie-lsp / llama.cpp |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for group in groups:
        if group[0].section != "edit":
            continue
        llama, pie = group
        method = pie.method if pie.method == llama.method else f"{llama.method} / pie"
        assert llama.first is not None and pie.first is not None
        ratio = statistics.median(pie.seconds) / statistics.median(llama.seconds)
        lines.append(
            f"| {llama.scenario} | {method} | {_ms(llama)} | {llama.first.tokens_run} | "
            f"{_ms(pie)} | {pie.first.tokens_run} | {ratio:.2f} |"
        )
    lines += [
        "",
        f"Decode, ms per token; weight-read floor {floor_ms:.1f} ms.",
        "",
        "| | llama.cpp | pie-lsp | pie-lsp / llama.cpp |",
        "|---|---:|---:|---:|",
    ]
    for group in groups:
        if group[0].section != "decode":
            continue
        llama, pie = group
        llama_ms = statistics.median(llama.seconds) * 1000
        pie_ms = statistics.median(pie.seconds) * 1000
        lines.append(
            f"| {llama.scenario} | {_ms(llama)} = {llama_ms / floor_ms:.2f}× floor | "
            f"{_ms(pie)} = {pie_ms / floor_ms:.2f}× floor | {pie_ms / llama_ms:.2f} |"
        )
    lines += [
        "",
        f"Keystroke → {GHOST_TEXT_TOKENS}-token ghost text, ms: median (min); tokens run before "
        "decoding; ratio to llama-server.",
        "",
        "| case | engine and method | ms | tokens | / llama-server |",
        "|---|---|---:|---:|---:|",
    ]
    for group in groups:
        if group[0].section != "end_to_end":
            continue
        server = statistics.median(group[0].seconds)
        for case in group:
            assert case.first is not None
            lines.append(
                f"| {case.scenario} | {case.engine}: {case.method} | {_ms(case)} | "
                f"{case.first.tokens_run} | {statistics.median(case.seconds) / server:.2f} |"
            )
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        choices=["qwen2.5-coder-0.5b-shape", "default"],
        default="qwen2.5-coder-0.5b-shape",
    )
    parser.add_argument(
        "--shape",
        type=json.loads,
        default=None,
        help="JSON overrides of the 0.5B shape, e.g. '{\"num_hidden_layers\": 2}'",
    )
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--flash-attn",
        choices=sorted(LLAMA_CPP_FLASH_ATTN),
        default="off",
        help="llama.cpp flash attention for the timed runs (the check is off)",
    )
    parser.add_argument("--n-batch", type=int, default=2048, help="llama.cpp n_batch")
    parser.add_argument("--n-ubatch", type=int, default=512, help="llama.cpp n_ubatch")
    parser.add_argument(
        "--gguf-dir",
        type=Path,
        default=None,
        help="where the GGUF goes (default: a temporary folder, removed after)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="a remark on the machine, kept in the JSON")
    args = parser.parse_args(argv)
    _llama_cpp()  # fail early, before minutes of model building, when the extra is missing

    torch.set_num_threads(args.threads)
    load_start = load_average()
    if args.model == "default":
        loaded = load_model("default")
        model, tokenizer, shape = loaded.model, loaded.tokenizer, None
    else:
        shape = {**QWEN_05B_SHAPE, **(args.shape or {})}
        model, tokenizer = shaped_model(shape), None
    counter = TokenCounter()
    probe = EditableCache(model, initial_capacity=16)
    forward_path = "lean" if getattr(probe, "_lean_step", None) is not None else "transformers"
    del probe
    workload = build_workload(args.model, model, tokenizer, args.tokens)

    print("measuring streaming-read bandwidth", flush=True)
    bandwidth = streaming_read_bandwidth(args.threads)
    weight_bytes = weight_bytes_per_decode_step(model)
    floor_seconds = weight_bytes / bandwidth["bytes_per_second"]

    gguf_dir = args.gguf_dir or Path(tempfile.mkdtemp(prefix="pie-lsp-gguf-"))
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = gguf_dir / f"{args.model}.f32.gguf"
    print(f"writing {gguf_path}", flush=True)
    started = time.perf_counter()
    write_gguf(model, gguf_path)
    print(f"  {gguf_path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")
    llama_model = LlamaCppModel(gguf_path)
    try:
        print("checking logits", flush=True)
        check = logits_check(model, llama_model, workload.document, args)
        print(
            f"  max |llama.cpp − transformers| = {check['max_abs_difference']:.3g} "
            f"(tolerance {check['tolerance']:.3g}, max |logit| {check['max_abs_reference_logit']:.3g})"
        )
        if not check["passed"]:
            banner = "!" * 78
            print(
                f"\n{banner}\nLOGITS DO NOT MATCH: llama.cpp and transformers disagree by "
                f"{check['max_abs_difference']:.3g} > {check['tolerance']:.3g}.\nThe GGUF is not "
                f"the same model; no timing is meaningful. Nothing was written.\n{banner}",
                file=sys.stderr,
            )
            raise SystemExit(3)
        context = LlamaCppContext(
            llama_model,
            n_ctx=_context_size(args.tokens + 3),
            threads=args.threads,
            flash_attn=args.flash_attn,
            n_batch=args.n_batch,
            n_ubatch=args.n_ubatch,
        )
        settings = replace(CompletionSettings(), speculative_tokens=0)
        print("encoding base states", flush=True)
        groups, facts = build_cases(CaseBuilder(model, context, counter), workload, settings)
        print(f"timing, {args.repeats} repetitions, engines interleaved", flush=True)
        run_interleaved(groups, args.repeats)
        system_info = llama_model.system_info()
        context.close()
    finally:
        llama_model.close()
        if args.gguf_dir is None:
            shutil.rmtree(gguf_dir, ignore_errors=True)

    floor_ms = floor_seconds * 1000
    table = markdown_tables(groups, floor_ms)
    print()
    print(table)
    cases = [case.summary() for group in groups for case in group]
    for row in cases:
        if row["section"] == "decode":
            row["multiple_of_floor"] = row["median_ms"] / floor_ms
    for group in groups:
        reference = statistics.median(group[0].seconds)
        for case in group:
            summary = next(
                c
                for c in cases
                if c["engine"] == case.engine
                and c["method"] == case.method
                and c["scenario"] == case.scenario
            )
            summary["ratio_to_first_in_group"] = statistics.median(case.seconds) / reference
    report = {
        "benchmark": "pie-lsp against llama.cpp, side by side",
        "command": "python -m benchmarks.bench_llamacpp "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "shape": shape,
        "weights": "random float32" if args.model != "default" else "shipped default model",
        "machine": machine_record(
            args.threads,
            load_average_start=load_start,
            note=args.note,
            llama_cpp_python=_package_version("llama_cpp_python"),
            gguf=_package_version("gguf"),
            llama_cpp_system_info=system_info,
        ),
        "llama_cpp_settings": {
            "n_ctx": _context_size(args.tokens + 3),
            "n_batch": args.n_batch,
            "n_ubatch": args.n_ubatch,
            "n_threads": args.threads,
            "n_threads_batch": args.threads,
            "flash_attention": args.flash_attn,
            "kv_cache_type": "f32",
            "kv_unified": True,
            "weights": "GGUF f32 written with gguf.GGUFWriter",
        },
        "pie_lsp_settings": {
            "completion_settings": {k: getattr(settings, k) for k in CompletionSettings.names()},
            "kv_cache_dtype": str(next(model.parameters()).dtype),
            # EditableCache picks its own forward pass (a lean step or the transformers forward).
            "forward_path": forward_path,
            "note": "no drafts but the recalled ghost text in its own rows (see simplifications)",
        },
        "floor": {
            "weight_bytes_per_decode_step": weight_bytes,
            "streaming_read": bandwidth,
            "floor_ms": floor_ms,
            "definition": "weight bytes read per decode step / streaming-read bytes per second",
        },
        "logits_check": check,
        "repeats": args.repeats,
        "interleaving": "engines alternate inside each case; order reversed every repetition",
        "workload": facts,
        "simplifications": SIMPLIFICATIONS,
        "cases": cases,
        "logit_consistency_first_repetition": consistency(groups),
        "table_markdown": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
