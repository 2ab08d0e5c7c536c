"""Measurements on compiled models: coordinate checks (and, next, Hessian spectra)."""

from .coord import CoordResult, coordcheck

__all__ = ["CoordResult", "coordcheck"]
