"""Data: a CIFAR-format folder written here loads through torchvision; clear errors when data is absent."""

import pickle

import numpy as np
import pytest
import torch

from mupdsl.data import DataMissing, char_dataset, cifar10, linear_task, mnist1d, teacher


def write_cifar(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar_format_folder_loads_through_torchvision(tmp_path):
    write_cifar(tmp_path)
    train = cifar10(tmp_path, train=True, verify=False)
    test = cifar10(tmp_path, train=False, augment=False, verify=False)
    assert len(train) == 20 and len(test) == 4
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    with pytest.raises(DataMissing, match="md5|corrupted|incomplete"):
        cifar10(tmp_path, verify=True)            # torchvision's integrity check rejects non-official files


def test_missing_cifar_names_the_folder(tmp_path):
    with pytest.raises(DataMissing, match=str(tmp_path / "nowhere")):
        cifar10(tmp_path / "nowhere")


def test_text_linear_teacher_mnist1d(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hello world, hello mupdsl\n" * 4)
    x, y, vocab = char_dataset(path, context=8)
    assert x.shape[1] == 8 and torch.equal(x[1:, :], y[:-1, :]) and len(vocab) == len(set(path.read_text()))
    X, Y, w = linear_task(5)
    assert torch.equal(X, torch.eye(5)) and torch.equal(Y, w)
    xt, yt = teacher(100)
    assert xt.shape == (100, 40) and yt.max() < 10
    a = mnist1d(num_samples=400)
    b = mnist1d(num_samples=400)          # from the cache, identical
    assert a[0].shape == (320, 40) and torch.equal(a[0], b[0])
