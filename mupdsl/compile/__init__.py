"""The FX compiler: a ``.param`` spec onto any torch model, with a plan a user can verify (design.md §3)."""

from .compiled import CompiledModel, compile_model, load_compiled
from .errors import CompileError
from .factory import ModelFactory, load_factory
from .plan import Plan

__all__ = ["CompileError", "CompiledModel", "ModelFactory", "Plan", "compile_model", "load_compiled", "load_factory"]
