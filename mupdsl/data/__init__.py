"""Datasets the experiments use, made here or read from local folders — never downloaded at run time."""

from .mnist1d import mnist1d
from .teacher import teacher

__all__ = ["mnist1d", "teacher"]
