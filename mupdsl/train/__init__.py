"""Training: the one loop every consumer calls (:mod:`.engine`), learning-rate schedules (:mod:`.schedule`) and
the task losses (:mod:`.losses`). Below ``measure`` and ``sweep``, above ``compile``: it trains compiled models and
knows nothing of what is measured along the way (callers pass hooks)."""

from .engine import DIVERGED_FACTOR, ModuleReplica, StackedReplicas, TrainLog, plain_forward, train
from .losses import logits_of, member_losses, task_loss
from .schedule import SCHEDULES, Schedule

__all__ = ["DIVERGED_FACTOR", "ModuleReplica", "SCHEDULES", "Schedule", "StackedReplicas", "TrainLog", "logits_of",
           "member_losses", "plain_forward", "task_loss", "train"]
