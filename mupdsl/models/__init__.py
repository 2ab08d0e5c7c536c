"""Reference architectures from the papers, in plain standard-parametrization PyTorch (no hooks for the compiler).

Each submodule is a model file as ``mupdsl compile`` expects one: ``build(width, depth)`` and
``example_batch(batch_size)``; name one as ``mupdsl.models:mlp``.
"""

MODELS = ("mlp", "resconv", "resnet", "vit", "gpt")
