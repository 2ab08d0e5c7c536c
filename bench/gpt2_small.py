"""GPT-2-small shapes for the compile benchmark: the reference GPT with 12 heads, vocab 50257, context 1024."""

import torch

from mupdsl.models.gpt import GPT


def build(width: int, depth: int = 12):
    return GPT(width, depth, heads=12, vocab=50257, context=1024, pre_ln=True, tied=True)


def example_batch(batch_size: int):
    idx = torch.randint(0, 50257, (batch_size, 9))
    return idx[:, :-1], idx[:, 1:]
