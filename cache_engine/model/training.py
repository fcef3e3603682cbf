"""Train the shipped default model: a byte-level BPE tokenizer and a small Llama on Python sources.

    python -m cache_engine.model.training                            # train (or resume)
    python -m cache_engine.model.training --init-from cache_engine/default_model
                                                                     # continue from shipped weights
    python -m cache_engine.model.training --steps 20                 # a short smoke run
    python -m cache_engine.model.training --export-only              # newest checkpoint → --output
    python -m cache_engine.model.training --init-from DIR --continue-run
                                                     # go on with a committed, unfinished run
    python -m cache_engine.model.training --export-only --average-last 2
                                        # export the mean of the newest two weight snapshots
    python -m cache_engine.model.training --export-only --average-steps 2050 2300 2500
                                        # export the mean of the snapshots at these steps

Everything is seeded, and batch k depends only on the seed and k, so a resumed run sees the
batches it would have seen. Checkpoints (model, optimizer, step, RNG, log) go to
--checkpoint-dir every --checkpoint-every steps, and a run picks up from the newest one there.
The weights alone are also kept every --snapshot-every steps, for --average-last and
--average-steps (`weight_averaging.py`); an averaged export's log ends at its newest snapshot.
The finished model is exported to --output (the packaged default model folder) as safetensors.

Batches mix plain chunks of source with fill-in-the-middle samples cut where editors ask for
completions, in both layouts the engine uses (`fim_samples.py`), at --seq-len tokens per row.

The linear layers' products, forward and backward, run through oneDNN where torch has it
(kernels/onednn_linear.py: about twice MKL's speed on this project's AMD CPU); --torch-products
keeps torch's own.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cache_engine.model.corpus import (
    END_OF_TEXT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    SPECIAL_TOKENS,
    SourceFile,
    collect_sources,
    corpus_packages,
    split_into_chunks,
)
from cache_engine.model.fim_samples import FimLayout, fim_ids, split_for_fim
from cache_engine.model.loading import DEFAULT_MODEL_DIR
from cache_engine.model.weight_averaging import (
    chosen_snapshots,
    latest_snapshots,
    load_average,
    save_snapshot,
)
from kernels.onednn_linear import route_linears_through_onednn

VOCAB_SIZE = 4096
SEQ_LEN = 2048
# Characters of source per sample: about SEQ_LEN tokens of code at ~3 characters a token.
CHARS_PER_TOKEN = 3
FIM_RATE = 0.7
FIM_LAYOUTS = ["psm", "spm"]
DATA_DESCRIPTION = (
    "the allowlisted corpus of `cache_engine/model/corpus.py` (the standard library, pip, "
    "setuptools and the sources of CORPUS_PACKAGES, permissive licences, deduplicated, no test "
    "suites or generated files); 70 % of the samples fill-in-the-middle, cut where editors ask "
    "for completions (`fim_samples.py`), half in psm and half in spm layout"
)
# The standard library is general-purpose Python; the big packages are tempered by sqrt(size).
STDLIB_WEIGHT = 2.0


def model_config(vocab_size: int, eos_id: int) -> LlamaConfig:
    # Sized for 2 CPU cores: ~5.5 M parameters, GQA (4 query heads over 2 key/value heads),
    # head_dim 64 like the real code models, and room for 4k-token contexts at inference.
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def train_tokenizer(files: list[SourceFile], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator((f.text for f in files), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


class TrainingStream:
    """Batches that depend only on (seed, step): resumable without storing a data position."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        files: list[SourceFile],
        *,
        seed: int,
        seq_len: int,
        fim_rate: float = FIM_RATE,
    ):
        self.files = files
        self.seed = seed
        self.seq_len = seq_len
        self.fim_rate = fim_rate
        self._backend = tokenizer.backend_tokenizer
        vocab = tokenizer.get_vocab()
        self._ids = {name: vocab[name] for name in SPECIAL_TOKENS}
        by_origin: dict[str, list[int]] = {}
        for index, source in enumerate(files):
            by_origin.setdefault(source.origin, []).append(index)
        self._origins = sorted(by_origin)
        self._origin_files = [by_origin[o] for o in self._origins]
        self._origin_weights = [
            math.sqrt(sum(len(files[i].text) for i in members))
            * (STDLIB_WEIGHT if origin == "stdlib" else 1.0)
            for origin, members in zip(self._origins, self._origin_files)
        ]
        self._file_weights = [[len(files[i].text) for i in m] for m in self._origin_files]

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """[batch_size, seq_len + 1] token ids: samples packed end to end."""
        rng = random.Random(self.seed * 1_000_003 + step)
        needed = batch_size * (self.seq_len + 1)
        ids: list[int] = []
        while len(ids) < needed:
            ids.extend(self.sample(rng))
        return torch.tensor(ids[:needed], dtype=torch.long).view(batch_size, self.seq_len + 1)

    def sample(self, rng: random.Random) -> list[int]:
        origin = rng.choices(range(len(self._origins)), weights=self._origin_weights)[0]
        index = rng.choices(self._origin_files[origin], weights=self._file_weights[origin])[0]
        text = _window(self.files[index].text, self.seq_len * CHARS_PER_TOKEN, rng)
        end = self._ids[END_OF_TEXT]
        if rng.random() >= self.fim_rate or len(text) < 2:
            return [*self._encode(text), end]
        layout: FimLayout = "psm" if rng.random() < 0.5 else "spm"
        return fim_ids(
            split_for_fim(text, rng),
            self._encode,
            layout=layout,
            prefix_id=self._ids[FIM_PREFIX],
            suffix_id=self._ids[FIM_SUFFIX],
            middle_id=self._ids[FIM_MIDDLE],
            end_id=end,
        )

    def _encode(self, text: str) -> list[int]:
        return self._backend.encode(text).ids if text else []


def _window(text: str, max_chars: int, rng: random.Random) -> str:
    """A run of whole lines of about `max_chars` characters starting at a random line."""
    if len(text) <= max_chars:
        return text
    start = text.rfind("\n", 0, rng.randrange(len(text) - max_chars // 2)) + 1
    end = text.rfind("\n", start, start + max_chars) + 1
    return text[start : end if end > start else start + max_chars]


def held_out_rows(
    tokenizer: PreTrainedTokenizerFast, files: list[SourceFile], seq_len: int = SEQ_LEN
) -> torch.Tensor:
    ids: list[int] = []
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    for source in files:
        for chunk in split_into_chunks(source.text, seq_len * CHARS_PER_TOKEN):
            ids.extend(tokenizer.backend_tokenizer.encode(chunk).ids + [eos])
    rows = len(ids) // (seq_len + 1)
    return torch.tensor(ids[: rows * (seq_len + 1)], dtype=torch.long).view(rows, seq_len + 1)


@torch.no_grad()
def held_out_loss(model: LlamaForCausalLM, rows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start : start + batch_size]
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train()
    return total / count


def learning_rate(step: int, total_steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _newest_checkpoint(directory: Path) -> Path | None:
    checkpoints = sorted(directory.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    checkpoint_dir: Path = args.checkpoint_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    train_files, held_out_files = collect_sources(corpus_packages())
    tokenizer_dir = checkpoint_dir / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    elif args.init_from is not None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.init_from)
        tokenizer.save_pretrained(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(train_files, args.vocab_size)
        tokenizer.save_pretrained(tokenizer_dir)
    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = model_config(len(tokenizer), eos_id)
    model = LlamaForCausalLM(config)
    if not args.torch_products:
        print(f"{route_linears_through_onednn(model)} linear layers multiply through oneDNN")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=False
    )
    step = 0
    rewarm_until = 0
    log: list[dict] = []
    resume_from = _newest_checkpoint(checkpoint_dir)
    if resume_from is not None:
        state = torch.load(resume_from, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, log = state["step"], state["log"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {resume_from} at step {step}")
    elif args.init_from is not None:
        initial = LlamaForCausalLM.from_pretrained(args.init_from)
        model.load_state_dict(initial.state_dict())
        print(f"starting from the weights in {args.init_from}")
        summary = args.init_from / "training_log.json"
        if args.continue_run and summary.exists():
            # A committed export of an unfinished run: its schedule goes on from its step;
            # the optimizer's moments start over, so the learning rate warms up again.
            saved = json.loads(summary.read_text())
            step, log = int(saved["steps"]), list(saved["log"])
            rewarm_until = step + args.warmup
            print(f"continuing its run at step {step}")
    if args.export_only:
        export(model, tokenizer, log, args, step=step, train_minutes=None)
        return
    # Fail before hours of training, not at the export after them.
    if (args.average_last > 1 or args.average_steps) and args.snapshot_every <= 0:
        raise SystemExit(
            "--average-last and --average-steps need snapshots: give --snapshot-every a positive value"
        )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{len(train_files)} train files ({sum(len(f.text) for f in train_files) / 1e6:.1f} MB), "
        f"{len(held_out_files)} held-out files, {n_params / 1e6:.2f} M parameters"
    )
    eval_rows = held_out_rows(tokenizer, held_out_files, args.seq_len)[: args.eval_rows]
    stream = TrainingStream(tokenizer, train_files, seed=args.seed, seq_len=args.seq_len)
    tokens_per_step = args.batch_size * args.seq_len
    progress = tqdm(total=args.steps, initial=step, unit="step", dynamic_ncols=True)
    started = time.monotonic()
    steps_this_run = 0
    model.train()
    while step < args.steps:
        batch = stream.batch(step, args.batch_size)
        lr = learning_rate(step, args.steps, args.lr, args.warmup)
        if step < rewarm_until:
            lr *= (step - (rewarm_until - args.warmup) + 1) / args.warmup
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        steps_this_run += 1
        elapsed = time.monotonic() - started
        progress.set_postfix(
            loss=f"{loss.item():.3f}",
            lr=f"{lr:.2e}",
            tok_s=f"{tokens_per_step * steps_this_run / max(elapsed, 1e-9):.0f}",
        )
        progress.update(1)
        if step % args.eval_every == 0 or step == args.steps:
            val = held_out_loss(model, eval_rows, args.batch_size)
            entry = {"step": step, "train_loss": loss.item(), "held_out_loss": val}
            log.append(entry)
            progress.write(json.dumps(entry))
        if step % args.checkpoint_every == 0 or step == args.steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "log": log,
                "torch_rng": torch.get_rng_state(),
                "args": {k: str(v) for k, v in vars(args).items()},
            }
            path = checkpoint_dir / f"step-{step}.pt"
            torch.save(state, path)
            for old in checkpoint_dir.glob("step-*.pt"):
                if old != path:
                    old.unlink()
        if args.snapshot_every > 0 and step % args.snapshot_every == 0:
            save_snapshot(model, checkpoint_dir, step)
    progress.close()
    export(model, tokenizer, log, args, step=step, train_minutes=(time.monotonic() - started) / 60)


def export(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    log: list[dict],
    args: argparse.Namespace,
    *,
    step: int,
    train_minutes: float | None,
) -> None:
    output: Path = args.output
    averaged_steps = None
    chosen = None
    if args.average_steps:
        chosen = chosen_snapshots(args.checkpoint_dir, args.average_steps)
    elif args.average_last > 1:
        chosen = latest_snapshots(args.checkpoint_dir, args.average_last)
    if chosen is not None:
        load_average(model, [path for _, path in chosen])
        averaged_steps = [snapshot_step for snapshot_step, _ in chosen]
        print(f"exporting the mean of the snapshots at steps {averaged_steps}")
        # The weights are no newer than the newest snapshot in them.
        step = averaged_steps[-1]
        log = [entry for entry in log if entry.get("step", 0) <= step]
    output.mkdir(parents=True, exist_ok=True)
    # The engine's fimLayout "auto" picks spm for models that declare it.
    model.config.fim_layouts = FIM_LAYOUTS
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    previous = None
    if args.init_from is not None and (args.init_from / "training_log.json").exists():
        earlier = json.loads((args.init_from / "training_log.json").read_text())
        if args.continue_run:
            previous = earlier.get("previous_stage")
        else:
            previous = {k: v for k, v in earlier.items() if k != "log"}
    summary = {
        "data": DATA_DESCRIPTION,
        "fim_layouts": FIM_LAYOUTS,
        "previous_stage": previous,
        "steps": step,
        # The exported weights are the mean of these steps' snapshots (None: step's own).
        "averaged_snapshot_steps": averaged_steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "init_from": str(args.init_from) if args.init_from else None,
        "tokens_seen": step * args.batch_size * args.seq_len,
        "peak_lr": args.lr,
        "seed": args.seed,
        # Wall time of this process only (a resumed run counts from its resume); None for an
        # export of a checkpoint.
        "train_minutes": round(train_minutes, 1) if train_minutes is not None else None,
        "log": log,
    }
    (output / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"exported to {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument(
        "--init-from", type=Path, default=None, help="start from this model folder's weights"
    )
    parser.add_argument(
        "--continue-run",
        action="store_true",
        help="with --init-from: go on with that export's run (its step, log and schedule)",
    )
    parser.add_argument(
        "--export-only", action="store_true", help="export the newest checkpoint and stop"
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    parser.add_argument(
        "--torch-products",
        action="store_true",
        help="multiply with torch's own kernels instead of oneDNN (kernels/onednn_linear.py)",
    )
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-rows", type=int, default=48)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints/default_model"))
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=250,
        help="keep the weights alone every this many steps (0: never), for --average-last and "
        "--average-steps",
    )
    averaging = parser.add_mutually_exclusive_group()
    averaging.add_argument(
        "--average-last",
        type=int,
        default=1,
        help="export the mean of the newest this many snapshots instead of the current weights",
    )
    averaging.add_argument(
        "--average-steps",
        type=int,
        nargs="+",
        default=None,
        metavar="STEP",
        help="export the mean of the snapshots at these steps instead of the current weights",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_MODEL_DIR)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
