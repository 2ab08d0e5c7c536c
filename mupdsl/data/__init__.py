"""Datasets the experiments use, made here or read from local folders — never downloaded at run time."""

from .cifar10 import DataMissing, cifar10
from .linear import linear_task
from .mnist1d import mnist1d
from .teacher import teacher
from .text import char_dataset

__all__ = ["DataMissing", "char_dataset", "cifar10", "linear_task", "mnist1d", "teacher"]
