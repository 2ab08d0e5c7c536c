"""The compiler: a ``.param`` spec onto the user's own torch model, analysed with torch.fx / torch.export, with a
plan a user can verify (design.md §3)."""

from .api import apply, compile_model
from .checkpoint import load_compiled
from .compiled import CompiledModel
from .errors import CompileError
from .factory import ModelFactory, load_factory
from .initialize import initialize
from .plan import Plan

__all__ = ["CompileError", "CompiledModel", "ModelFactory", "Plan", "apply", "compile_model", "initialize",
           "load_compiled", "load_factory"]
