"""Forward passes of a few tokens through a Llama-family model in compiled C, on CPU.

A decode step reads every weight once and does little arithmetic with each. In torch it is also
some 40 operator calls per layer, each a dispatch and, on two cores, often a wake-up of OpenMP
workers, and SDPA's CPU kernel for one query over 2k slots reads the keys and values at a
fraction of the memory bandwidth. On the default model (6 layers, 23 MB of weights) that
overhead is most of the step; on the 0.5B shape it adds about a fifth to the weight products.
`llama_decode_cpu.c` does the whole step in one call: the products, RMSNorm, RoPE, the K/V
write into the slab, attention over one query per head and SiLU, with its own two-thread pool
that spins between the parts of a step and sleeps between steps.

The same call takes up to MAX_ROWS tokens at increasing slots (a verify pass of drafted
tokens, an edit's few new tokens with the re-fed last one, a short refresh): every block of
weight rows is read from memory once and then serves each token from L1 or L2. Torch's GEMMs
for so few rows pack the weights first, which reads them twice; on the 0.5B shape a verify pass
of 8 tokens here costs about 1.7 decode steps against 2.6 in torch, so drafts pay again.

The C file is built on first use with the machine's C compiler (`CC`, else `cc`) for this CPU
(`-march=native`), into `$PIE_LSP_KERNEL_CACHE` or `~/.cache/pie-lsp/kernels`, under a name
that hashes the source, the flags, the compiler and the CPU's flags, so a change to any of them
builds anew. Without a compiler, `CompiledStepUnavailable` says why and callers keep torch.

Weights may be float32, bfloat16 (row-major) or int8 with one scale per output row (row-major,
cache_engine/model/quantization.py's weight-only int8, or its int8 with dynamically quantized
activations), and the K/V slab float32 or bfloat16.
The arithmetic is float32 throughout: bfloat16 and int8 values are widened as they are read, an
int8 row's sum of products is multiplied by its scale, and keys and values are rounded to
nearest-even as they are written to a bfloat16 slab, as torch's `.to(torch.bfloat16)` rounds.
bfloat16 weights halve the bytes a step reads and int8 quarters them (torch's int8 kernel
instead rounds the activations to bfloat16). Widening int8 weights to float32 costs more time
than reading them (one core widens and sums int8 rows at about 14 GB/s and reads at 27-33), so
int8 projections may also take their inputs quantized: each input row is rounded to int8 by blocks of 32 with a
scale each, once per product for all threads, and a row's product is the sum over blocks of
scale · Σ q·w, the inner sums in 32-bit integers (AVX-512 VNNI's vpdpbusd, AVX2's maddubs and
madd, or plain C, all adding the same numbers in the same order). Norm weights, biases and scales are copied to
float32 when a pass is built.

The reference is `cache_engine/kv/llama_step.LlamaStep`, the torch step it replaces for passes
of up to `COMPILED_MAX_ROWS` tokens; tests/kernels/test_llama_decode_cpu.py compares the two.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("llama_decode_cpu.c")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-pthread")
# rotate() in the C file holds one head in a fixed buffer.
MAX_HEAD_DIM = 1024
# The most tokens one pass takes (MAX_ROWS in the C file).
MAX_ROWS = 64


class CompiledStepUnavailable(RuntimeError):
    """The compiled step cannot be built or used here; the message says why."""


class _Projection(ctypes.Structure):
    _fields_ = [
        ("weight", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("transposed", ctypes.c_int64),
        ("format", ctypes.c_int64),
    ]


# projection_t.format in the C file.
_WEIGHT_FORMATS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
# WEIGHTS_INT8_Q8: int8 weights by activations quantized to int8 as the product starts.
_INT8_Q8 = 3
# ACTIVATION_BLOCK in the C file: activations quantized together share one scale.
ACTIVATION_BLOCK = 32


class _Layer(ctypes.Structure):
    _fields_ = [
        ("input_norm", ctypes.c_void_p),
        ("post_attention_norm", ctypes.c_void_p),
        *((name, _Projection) for name in ("q", "k", "v", "o", "gate", "up", "down")),
        ("keys", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int64)
            for name in (
                "layers",
                "hidden",
                "heads",
                "kv_heads",
                "head_dim",
                "intermediate",
                "vocab",
                "capacity",
            )
        ),
        ("eps", ctypes.c_double),
        ("embed", ctypes.c_void_p),
        ("embed_row", ctypes.c_int64),
        ("embed_col", ctypes.c_int64),
        ("final_norm", ctypes.c_void_p),
        ("lm_head", _Projection),
        ("layer", ctypes.POINTER(_Layer)),
        ("embed_bf16", ctypes.c_int64),
        ("slab_bf16", ctypes.c_int64),
    ]


def _kernel_cache() -> Path:
    configured = os.environ.get("PIE_LSP_KERNEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pie-lsp" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CompiledStepUnavailable(f"{' '.join(command)} failed: {error}") from error
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()[:5]
            raise CompiledStepUnavailable(
                f"{' '.join(command)} exited {result.returncode}: {' / '.join(message)}"
            )
        # Another process may build the same file at the same time; either copy is whole.
        os.replace(built, target)


@functools.cache
def compiled_library() -> ctypes.CDLL:
    """The built C step, compiled on first use; raises CompiledStepUnavailable, saying why,
    where there is no working C compiler or the CPU is not x86-64 or AArch64 Linux/macOS."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise CompiledStepUnavailable(f"no C compiler {compiler!r} on PATH (set CC to one)")
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()[:1]
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CompiledStepUnavailable(f"{compiler} --version failed: {error}") from error
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS), compiler, *version, _cpu_flags()):
        key.update(part if isinstance(part, bytes) else part.encode())
    target = _kernel_cache() / f"llama_decode_cpu-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(compiler, target)
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:
        raise CompiledStepUnavailable(f"cannot load {target}: {error}") from error
    pointer = ctypes.c_void_p
    library.pie_forward.argtypes = [
        ctypes.POINTER(_Model),
        ctypes.c_int64,
        *(pointer,) * 5,
        ctypes.c_int64,
        pointer,
        ctypes.c_int,
    ]
    library.pie_forward.restype = ctypes.c_int
    library.pie_forward_scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int64]
    library.pie_forward_scratch_floats.restype = ctypes.c_int64
    library.pie_q8_path.argtypes = []
    library.pie_q8_path.restype = ctypes.c_char_p
    return library


def int8_activation_path() -> str:
    """Which loop the compiled step's int8-by-int8 products take on this CPU: "avx512vnni",
    "avx2" or "portable"."""
    return compiled_library().pie_q8_path().decode()


# A projection's (weight [out, in], bias [out] or None), or (int8 weight [out, in], bias or None,
# scales [out]) for weight-only int8, whose row o stands for weight[o] · scales[o], or the same
# with ACTIVATION_BLOCK appended for int8 weights whose inputs are quantized to int8 by blocks of
# that many values (cache_engine/model/quantization.py's Int8DynamicLinear).
WeightProjection = (
    tuple[torch.Tensor, torch.Tensor | None]
    | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
    | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]
)


@dataclass(frozen=True)
class LayerTensors:
    """One layer's weights, as the model holds them: projections (`WeightProjection`; float32
    stored in either order, bfloat16 and int8 [out, in]), norms [hidden]."""

    input_norm: torch.Tensor
    q: WeightProjection
    k: WeightProjection
    v: WeightProjection
    o: WeightProjection
    post_attention_norm: torch.Tensor
    gate: WeightProjection
    up: WeightProjection
    down: WeightProjection


STORED_DTYPES = (torch.float32, torch.bfloat16)


def _float32_cpu(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
        raise CompiledStepUnavailable(
            f"the compiled step reads float32 CPU tensors; {name} is {tensor.dtype} on "
            f"{tensor.device}"
        )
    return tensor


def _stored_cpu(name: str, tensor: torch.Tensor) -> bool:
    """Whether `tensor`, a weight or the slab, is bfloat16 (else float32; anything else is
    refused)."""
    if tensor.dtype not in STORED_DTYPES or tensor.device.type != "cpu":
        raise CompiledStepUnavailable(
            f"the compiled step reads float32 or bfloat16 CPU tensors; {name} is "
            f"{tensor.dtype} on {tensor.device}"
        )
    return tensor.dtype == torch.bfloat16


def _vector(
    name: str, tensor: torch.Tensor | None, size: int, keep: list[torch.Tensor]
) -> int | None:
    """A norm weight, bias or scales as float32 (a copy when it is bfloat16, held in `keep`)."""
    if tensor is None:
        return None
    if _stored_cpu(name, tensor):
        tensor = tensor.float()
        keep.append(tensor)
    if tensor.shape != (size,) or not tensor.is_contiguous():
        raise CompiledStepUnavailable(
            f"{name} must be a contiguous vector of {size}, got shape {tuple(tensor.shape)}"
        )
    return tensor.data_ptr()


def _projection(
    name: str, projection: WeightProjection, out: int, inputs: int, keep: list[torch.Tensor]
) -> _Projection:
    weight, bias, *scales = projection
    format_code = _WEIGHT_FORMATS.get(weight.dtype)
    if len(scales) == 2:
        if scales[1] != ACTIVATION_BLOCK or inputs % ACTIVATION_BLOCK:
            raise CompiledStepUnavailable(
                f"{name} quantizes its {inputs} inputs by blocks of {scales[1]}; the compiled "
                f"step quantizes by blocks of {ACTIVATION_BLOCK}, and only inputs that split "
                "into whole blocks"
            )
        format_code = _INT8_Q8
        scales = scales[:1]
    if scales:
        if weight.dtype != torch.int8 or weight.device.type != "cpu":
            raise CompiledStepUnavailable(
                f"{name} has scales, so its weights must be int8 on CPU, not {weight.dtype} "
                f"on {weight.device}"
            )
        scales_pointer = _vector(f"{name} scales", scales[0], out, keep)
    else:
        _stored_cpu(name, weight)
        scales_pointer = None
    if weight.shape != (out, inputs):
        raise CompiledStepUnavailable(
            f"{name} must be [{out}, {inputs}], got {tuple(weight.shape)}"
        )
    if weight.is_contiguous():
        transposed = 0
    elif weight.dtype != torch.float32:
        raise CompiledStepUnavailable(f"{name} is {weight.dtype} but not stored [out, in]")
    elif weight.t().is_contiguous():
        transposed = 1
    else:
        raise CompiledStepUnavailable(f"{name} is stored neither [out, in] nor [in, out]")
    bias_pointer = _vector(f"{name} bias", bias, out, keep)
    return _Projection(weight.data_ptr(), bias_pointer, scales_pointer, transposed, format_code)


class CompiledForward:
    """Runs a few tokens through the model's weights with the C pass; see the module docstring.

    It reads the weights where they are when built: after a change of storage (a
    `store_weights_transposed`, new `.data`), build a new one; in-place updates are seen."""

    def __init__(
        self,
        *,
        embed: torch.Tensor,
        layers: list[LayerTensors],
        final_norm: torch.Tensor,
        lm_head: WeightProjection,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        eps: float,
    ):
        self.library = compiled_library()
        vocab, hidden = embed.shape
        intermediate = layers[0].gate[0].shape[0] if layers else 0
        if head_dim > MAX_HEAD_DIM or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise CompiledStepUnavailable(
                f"{num_heads} heads over {num_kv_heads} K/V heads of {head_dim} dims: the "
                f"compiled step needs whole groups and at most {MAX_HEAD_DIM} dims"
            )
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        # float32 copies of bfloat16 norms and biases, which the structs point into.
        copies: list[torch.Tensor] = []
        built = []
        for index, w in enumerate(layers):
            at = f"layer {index}"
            built.append(
                _Layer(
                    _vector(f"{at} input_norm", w.input_norm, hidden, copies),
                    _vector(f"{at} post_attention_norm", w.post_attention_norm, hidden, copies),
                    _projection(f"{at} q_proj", w.q, q_size, hidden, copies),
                    _projection(f"{at} k_proj", w.k, kv_size, hidden, copies),
                    _projection(f"{at} v_proj", w.v, kv_size, hidden, copies),
                    _projection(f"{at} o_proj", w.o, hidden, q_size, copies),
                    _projection(f"{at} gate_proj", w.gate, intermediate, hidden, copies),
                    _projection(f"{at} up_proj", w.up, intermediate, hidden, copies),
                    _projection(f"{at} down_proj", w.down, hidden, intermediate, copies),
                )
            )
        embed_bf16 = _stored_cpu("embed_tokens", embed)
        self._layers = (_Layer * len(built))(*built)
        self._model = _Model(
            len(built),
            hidden,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate,
            vocab,
            0,
            eps,
            embed.data_ptr(),
            embed.stride(0),
            embed.stride(1),
            _vector("final norm", final_norm, hidden, copies),
            _projection("lm_head", lm_head, vocab, hidden, copies),
            self._layers,
            int(embed_bf16),
            0,
        )
        self.vocab = vocab
        self.shape = (len(built), num_kv_heads, head_dim)
        # Held so that the pointers above stay valid.
        self._tensors = (embed, layers, final_norm, lm_head, copies)
        self._scratch = torch.empty(0)
        self._scratch_rows = 0
        # A pass's token ids, then its slots, as the C pass reads them; filled under the lock.
        self._ids = torch.empty(2 * MAX_ROWS, dtype=torch.int64)
        self._ids_view = self._ids.numpy()
        self._ids_pointer = self._ids.data_ptr()
        self._model_ref = ctypes.byref(self._model)
        self._slab: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._lock = threading.Lock()

    def __call__(
        self,
        tokens: Sequence[int],
        slots: Sequence[int],
        keys: torch.Tensor,
        values: torch.Tensor,
        cos: torch.Tensor,
        signed_sin: torch.Tensor,
        threads: int,
        *,
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Logits [n, vocab] (or [1, vocab], the last token's) for the n tokens at `slots`
        (increasing); their keys and values land in keys/values [layers, kv_heads, capacity,
        head_dim] (contiguous, float32 or bfloat16), and token i sees the slab's slots
        0..slots[i], the earlier tokens of the call included. cos and signed_sin are the rotary rows of those
        positions, [n, head_dim] each."""
        n = len(tokens)
        if not 1 <= n <= MAX_ROWS or len(slots) != n:
            raise ValueError(
                f"{n} tokens at {len(slots)} slots: a pass takes 1 to {MAX_ROWS} tokens, one slot "
                "each"
            )
        self._check_slab(keys, values)
        capacity = keys.shape[2]
        for index, slot in enumerate(slots):
            if not 0 <= slot < capacity:
                raise ValueError(f"slot {slot} is outside the slab's {capacity} slots")
            if index and slot <= slots[index - 1]:
                raise ValueError(f"slots {list(slots)} are not increasing")
        for token in tokens:
            if not 0 <= token < self.vocab:
                raise ValueError(f"token {token} is outside the vocabulary of {self.vocab}")
        head_dim = self.shape[2]
        for name, rows in (("cos", cos), ("signed_sin", signed_sin)):
            _float32_cpu(name, rows)
            if rows.numel() != n * head_dim or not rows.is_contiguous():
                raise ValueError(f"{name} must be {n} x {head_dim} contiguous values")
        # The structs and the scratch change before each pass: one pass at a time.
        with self._lock:
            self._point_at(keys, values)
            view = self._ids_view
            view[:n] = tokens
            view[n : 2 * n] = slots
            return self._run(n, cos.data_ptr(), signed_sin.data_ptr(), all_logits, threads)

    def bind(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        cos_table: torch.Tensor,
        signed_sin_table: torch.Tensor,
        threads: int,
    ) -> BoundPass:
        """A pass over this slab whose tokens sit at adjacent slots, slot s at position s, with
        the rotary rows of position s at row s of the tables ([rows, ..., head_dim] float32,
        contiguous, a row for every slot): everything but the tokens and the first slot is
        checked here, once."""
        self._check_slab(keys, values)
        head_dim = self.shape[2]
        for name, table in (("cos_table", cos_table), ("signed_sin_table", signed_sin_table)):
            _float32_cpu(name, table)
            if (
                not table.is_contiguous()
                or table.shape[-1] != head_dim
                or table.numel() < keys.shape[2] * head_dim
            ):
                raise ValueError(
                    f"{name} must hold {keys.shape[2]} contiguous rows of {head_dim}, got "
                    f"{tuple(table.shape)}"
                )
        return BoundPass(self, keys, values, cos_table, signed_sin_table, threads)

    def _check_slab(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        layers, kv_heads, head_dim = self.shape
        for name, slab in (("keys", keys), ("values", values)):
            _stored_cpu(name, slab)
            if slab.dim() != 4 or (slab.shape[0], slab.shape[1], slab.shape[3]) != (
                layers,
                kv_heads,
                head_dim,
            ):
                raise ValueError(
                    f"{name} must be [{layers}, {kv_heads}, capacity, {head_dim}], got "
                    f"{tuple(slab.shape)}"
                )
            if not slab.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
        if values.shape != keys.shape or values.dtype != keys.dtype:
            raise ValueError(
                f"values {tuple(values.shape)} {values.dtype} differ from keys "
                f"{tuple(keys.shape)} {keys.dtype}"
            )

    def _point_at(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Point the layer structs at this (checked) slab; under the lock."""
        capacity = keys.shape[2]
        slab = (keys.data_ptr(), values.data_ptr(), capacity, keys.element_size())
        if slab == self._slab:
            return
        layers, kv_heads, head_dim = self.shape
        key_base, value_base, _, element = slab
        self._model.capacity = capacity
        self._model.slab_bf16 = int(keys.dtype == torch.bfloat16)
        layer_bytes = element * kv_heads * capacity * head_dim
        for index in range(layers):
            layer = self._layers[index]
            layer.keys = key_base + index * layer_bytes
            layer.values = value_base + index * layer_bytes
        self._slab = slab
        self._scratch_rows = 0

    def _run(
        self, n: int, cos: int, signed_sin: int, all_logits: bool, threads: int
    ) -> torch.Tensor:
        """The C pass over the n tokens and slots in the ids buffer; under the lock."""
        if n > self._scratch_rows:
            # What a pass needs depends on its rows and the slab's capacity only.
            needed = self.library.pie_forward_scratch_floats(self._model_ref, n)
            if self._scratch.numel() < needed:
                self._scratch = torch.empty(needed, dtype=torch.float32)
            self._scratch_rows = n
        logit_rows = n if all_logits else 1
        logits = torch.empty(logit_rows, self.vocab, dtype=torch.float32)
        ids = self._ids_pointer
        status = self.library.pie_forward(
            self._model_ref,
            n,
            ids,
            ids + 8 * n,
            cos,
            signed_sin,
            logits.data_ptr(),
            logit_rows,
            self._scratch.data_ptr(),
            threads,
        )
        if status != 0:
            view = self._ids_view
            raise ValueError(
                f"the compiled pass refused tokens {view[:n].tolist()} at "
                f"{view[n : 2 * n].tolist()}"
            )
        return logits


class BoundPass:
    """`CompiledForward.bind`: a pass over one slab for tokens at adjacent slots (a decode
    step, a verify pass), which costs the C call and little else. It holds the slab and the
    tables it was bound to; after the slab grows, bind again."""

    def __init__(
        self,
        forward: CompiledForward,
        keys: torch.Tensor,
        values: torch.Tensor,
        cos_table: torch.Tensor,
        signed_sin_table: torch.Tensor,
        threads: int,
    ):
        self.forward = forward
        self.keys, self.values = keys, values
        self.capacity = keys.shape[2]
        self.threads = threads
        self._tables = (cos_table, signed_sin_table)
        self._cos, self._signed_sin = cos_table.data_ptr(), signed_sin_table.data_ptr()
        self._row_bytes = 4 * forward.shape[2]

    def __call__(
        self, tokens: Sequence[int], slot: int, *, all_logits: bool = False
    ) -> torch.Tensor:
        """Logits [n, vocab] (or [1, vocab], the last token's) for tokens at slots slot..; as
        `CompiledForward.__call__`. The C pass checks the ids and says which it refused."""
        n = len(tokens)
        if not 1 <= n <= MAX_ROWS or slot < 0 or slot + n > self.capacity:
            raise ValueError(
                f"{n} tokens at slot {slot}: a pass takes 1 to {MAX_ROWS} tokens within the "
                f"slab's {self.capacity} slots"
            )
        forward = self.forward
        with forward._lock:
            forward._point_at(self.keys, self.values)
            view = forward._ids_view
            view[:n] = tokens
            view[n : 2 * n] = range(slot, slot + n)
            at = slot * self._row_bytes
            return forward._run(n, self._cos + at, self._signed_sin + at, all_logits, self.threads)
