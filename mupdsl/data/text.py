"""Character-level text from a local file, for GPT-style runs: (context, next-character) pairs."""

from __future__ import annotations

from pathlib import Path

import torch


def char_dataset(path: str | Path, context: int = 16, limit: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x, y, vocabulary): x[i] = characters i..i+context-1 as indices, y[i] the same shifted by one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    if len(text) <= context + 1:
        raise ValueError(f"{path} has {len(text)} characters; need more than context + 1 = {context + 1}")
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text])
    windows = ids.unfold(0, context + 1, 1)
    if limit is not None:
        windows = windows[:limit]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), vocab
