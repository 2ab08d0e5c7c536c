"""CIFAR-10 through torchvision's loader, from a local root folder (downloading is never attempted at run time),
with the augmentations of seed 002 App. J (random crops, horizontal flips, 10-degree rotations)."""

from __future__ import annotations

from pathlib import Path

import torch

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class DataMissing(FileNotFoundError):
    """The dataset's folder is absent or incomplete; the message names the folder and what to put there."""


def cifar10(root: str | Path, train: bool = True, augment: bool = True, verify: bool = True):
    """The torchvision CIFAR10 dataset at ``root`` (the folder holding ``cifar-10-batches-py``).

    ``verify=False`` skips torchvision's md5 check of the official files (for CIFAR-format folders made by tests).
    """
    from torchvision import datasets, transforms  # noqa: PLC0415

    root = Path(root)
    if not (root / "cifar-10-batches-py").is_dir():
        raise DataMissing(f"CIFAR-10 not found in {root}: expected {root / 'cifar-10-batches-py'} (the python "
                          "version of the dataset); put it there by hand — mupdsl does not download at run time")
    steps = []
    if train and augment:
        steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.RandomRotation(10)]
    steps += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    cls = datasets.CIFAR10 if verify else _UncheckedCIFAR10
    try:
        return cls(str(root), train=train, download=False, transform=transforms.Compose(steps))
    except RuntimeError as exc:
        raise DataMissing(f"CIFAR-10 in {root} is incomplete or corrupted: {exc}") from None


def tensors(dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise (a prefix of) a dataset as (inputs, targets) tensors."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    xs, ys = zip(*(dataset[i] for i in range(n)))
    return torch.stack(xs), torch.as_tensor(ys)


def _unchecked():
    from torchvision import datasets  # noqa: PLC0415

    class Unchecked(datasets.CIFAR10):
        def _check_integrity(self) -> bool:  # the official md5 sums would reject a test's folder
            return (Path(self.root) / self.base_folder).is_dir()

        def _load_meta(self) -> None:
            import pickle  # noqa: PLC0415

            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unchecked


class _UncheckedCIFAR10:
    def __new__(cls, *args, **kwargs):
        return _unchecked()(*args, **kwargs)
