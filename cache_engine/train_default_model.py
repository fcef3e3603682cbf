"""Train the shipped default model: a byte-level BPE tokenizer and a small Llama on Python sources.

    python -m cache_engine.train_default_model                 # train from scratch (or resume)
    python -m cache_engine.train_default_model --steps 20      # a short smoke run

Everything is seeded. Checkpoints (model, optimizer, step, RNG) go to --checkpoint-dir every
--checkpoint-every steps, and a run picks up from the newest one there. The finished model is
exported to --output (the packaged default model folder) as safetensors.
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

from cache_engine.training_corpus import (
    END_OF_TEXT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    SPECIAL_TOKENS,
    SourceFile,
    collect_sources,
    split_into_chunks,
    training_documents,
)

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
VOCAB_SIZE = 4096
SEQ_LEN = 1024


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


def pack_epoch(
    tokenizer: PreTrainedTokenizerFast, files: list[SourceFile], epoch: int, seed: int
) -> torch.Tensor:
    """Tokenize one epoch's documents and pack them into rows of SEQ_LEN + 1 tokens."""
    docs = training_documents(
        files, epoch_seed=seed * 1000 + epoch, fim_rate=0.5, max_chars=SEQ_LEN * 3
    )
    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(docs):
        ids.extend(encoding.ids)
    rows = len(ids) // (SEQ_LEN + 1)
    return torch.tensor(ids[: rows * (SEQ_LEN + 1)], dtype=torch.long).view(rows, SEQ_LEN + 1)


def held_out_rows(tokenizer: PreTrainedTokenizerFast, files: list[SourceFile]) -> torch.Tensor:
    ids: list[int] = []
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    for source in files:
        for chunk in split_into_chunks(source.text, SEQ_LEN * 3):
            ids.extend(tokenizer.backend_tokenizer.encode(chunk).ids + [eos])
    rows = len(ids) // (SEQ_LEN + 1)
    return torch.tensor(ids[: rows * (SEQ_LEN + 1)], dtype=torch.long).view(rows, SEQ_LEN + 1)


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
    train_files, held_out_files = collect_sources()
    tokenizer_dir = checkpoint_dir / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(train_files, args.vocab_size)
        tokenizer.save_pretrained(tokenizer_dir)
    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = model_config(len(tokenizer), eos_id)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=False
    )
    step, epoch, row_in_epoch = 0, 0, 0
    log: list[dict] = []
    resume_from = _newest_checkpoint(checkpoint_dir)
    if resume_from is not None:
        state = torch.load(resume_from, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, row_in_epoch = state["step"], state["epoch"], state["row_in_epoch"]
        log = state["log"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {resume_from} at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{len(train_files)} train files, {len(held_out_files)} held-out files, "
        f"{n_params / 1e6:.2f} M parameters"
    )
    eval_rows = held_out_rows(tokenizer, held_out_files)[: args.eval_rows]
    rows = pack_epoch(tokenizer, train_files, epoch, args.seed)
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(epoch))
    tokens_per_step = args.batch_size * SEQ_LEN
    progress = tqdm(total=args.steps, initial=step, unit="step", dynamic_ncols=True)
    started = time.monotonic()
    model.train()
    while step < args.steps:
        if row_in_epoch + args.batch_size > rows.shape[0]:
            epoch, row_in_epoch = epoch + 1, 0
            rows = pack_epoch(tokenizer, train_files, epoch, args.seed)
            order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(epoch))
        batch = rows[order[row_in_epoch : row_in_epoch + args.batch_size]]
        row_in_epoch += args.batch_size
        lr = learning_rate(step, args.steps, args.lr, args.warmup)
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
        elapsed = time.monotonic() - started
        progress.set_postfix(
            loss=f"{loss.item():.3f}",
            lr=f"{lr:.2e}",
            epoch=epoch,
            tok_s=f"{tokens_per_step * progress.n / max(elapsed, 1e-9):.0f}",
        )
        progress.update(1)
        if step % args.eval_every == 0 or step == args.steps:
            val = held_out_loss(model, eval_rows, args.batch_size)
            entry = {"step": step, "train_loss": loss.item(), "held_out_loss": val, "epoch": epoch}
            log.append(entry)
            progress.write(json.dumps(entry))
        if step % args.checkpoint_every == 0 or step == args.steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "epoch": epoch,
                "row_in_epoch": row_in_epoch,
                "log": log,
                "torch_rng": torch.get_rng_state(),
                "args": vars(args),
            }
            path = checkpoint_dir / f"step-{step}.pt"
            torch.save(state, path)
            for old in checkpoint_dir.glob("step-*.pt"):
                if old != path:
                    old.unlink()
    progress.close()
    export(model, tokenizer, log, args, train_minutes=(time.monotonic() - started) / 60)


def export(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    log: list[dict],
    args: argparse.Namespace,
    *,
    train_minutes: float,
) -> None:
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    summary = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": SEQ_LEN,
        "tokens_seen": args.steps * args.batch_size * SEQ_LEN,
        "peak_lr": args.lr,
        "seed": args.seed,
        # Wall time of this process only; a resumed run counts from its resume.
        "train_minutes": round(train_minutes, 1),
        "log": log,
    }
    (output / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"exported to {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-rows", type=int, default=48)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints/default_model"))
    parser.add_argument("--output", type=Path, default=DEFAULT_MODEL_DIR)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
