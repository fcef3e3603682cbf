"""The default model's corpus: Python sources that are on every machine, split into train and held out.

The standard library of the running interpreter (PSF licence) is the bulk. pip's own code and
setuptools (both MIT) widen it; their vendored third-party packages are left out because their
licences vary. A fixed list of standard-library modules is held out for validation and for the
evaluation harness, so the model has never seen them.
"""

from __future__ import annotations

import importlib.util
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]

# Held-out standard-library modules, relative to the stdlib root. Chosen to span styles: small
# algorithmic modules, text processing, a protocol client, a package, and a large class-heavy module.
HELD_OUT_MODULES = (
    "bisect.py",
    "calendar.py",
    "csv.py",
    "difflib.py",
    "fractions.py",
    "ftplib.py",
    "heapq.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "shlex.py",
    "statistics.py",
    "textwrap.py",
    "zipapp.py",
)

_SKIPPED_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "__pycache__",
    "turtledemo",
    "pydoc_data",
}
_SKIPPED_DIRS_EXTRA = {"_vendor", "_distutils_hack"}


@dataclass(frozen=True)
class SourceFile:
    origin: str  # "stdlib", "pip" or "setuptools"
    relative_path: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _python_files(root: Path, skipped: set[str]) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts[:-1]
        if any(part in skipped for part in parts):
            continue
        files.append(path)
    return files


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def collect_sources() -> tuple[list[SourceFile], list[SourceFile]]:
    """Return (train, held_out) source files in a fixed order."""
    root = stdlib_root()
    held_out_set = set(HELD_OUT_MODULES)
    train: list[SourceFile] = []
    held_out: list[SourceFile] = []
    for path in _python_files(root, _SKIPPED_DIRS):
        rel = path.relative_to(root).as_posix()
        text = _read(path)
        if not text:
            continue
        (held_out if rel in held_out_set else train).append(SourceFile("stdlib", rel, text))
    for package in ("pip", "setuptools"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        package_root = Path(spec.origin).parent
        for path in _python_files(package_root, _SKIPPED_DIRS | _SKIPPED_DIRS_EXTRA):
            text = _read(path)
            if text:
                rel = f"{package}/{path.relative_to(package_root).as_posix()}"
                train.append(SourceFile(package, rel, text))
    missing = held_out_set - {f.relative_path for f in held_out}
    if missing:
        raise RuntimeError(f"held-out modules not found under {root}: {sorted(missing)}")
    return train, held_out


def split_into_chunks(text: str, max_chars: int) -> list[str]:
    """Split at line boundaries into pieces of at most about max_chars characters."""
    lines = text.splitlines(keepends=True)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if current and size + len(line) > max_chars:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    return chunks


def fim_transform(text: str, rng: random.Random) -> str:
    """Prefix-suffix-middle layout with two random character cut points."""
    a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    prefix, middle, suffix = text[:a], text[a:b], text[b:]
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}{END_OF_TEXT}"


def training_documents(
    files: list[SourceFile], *, epoch_seed: int, fim_rate: float, max_chars: int
) -> list[str]:
    """One epoch's documents: chunks of files, about fim_rate of them in FIM layout, shuffled."""
    rng = random.Random(epoch_seed)
    documents = []
    for source in files:
        for chunk in split_into_chunks(source.text, max_chars):
            if rng.random() < fim_rate:
                documents.append(fim_transform(chunk, rng))
            else:
                documents.append(chunk + END_OF_TEXT)
    rng.shuffle(documents)
    return documents
