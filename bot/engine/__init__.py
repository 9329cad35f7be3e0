"""The engine: the rollback service (the one door every face uses), its typed views and refusals; behind
it the gate, the approval path, the planner, the pipeline, the job runner and recovery.

Faces import from here and from ``bot.core``, nothing else of the engine's or the adapters'.
"""

from bot.adapters.artifacts import ArtifactError
from bot.core.events import Event, EventStatus
from bot.engine.app import StepStatus
from bot.engine.approval import Approved
from bot.engine.build import Engine, Fleet, build_fleet
from bot.engine.job_process import run_job
from bot.engine.pipeline import STEPS
from bot.engine.planner import Plan, UnknownStage
from bot.engine.refusals import Outdated, RefusalKind, Refused
from bot.engine.service import FreezeCheck, Overview, Pending, Recovered, RollbackService, Status
from bot.engine.watch import WatchEvent, WatchKind, alarm_reader, make_watcher, stack_name

__all__ = [
    "Approved",
    "ArtifactError",
    "Engine",
    "Event",
    "EventStatus",
    "Fleet",
    "FreezeCheck",
    "Outdated",
    "Overview",
    "Pending",
    "Plan",
    "Recovered",
    "RefusalKind",
    "Refused",
    "RollbackService",
    "STEPS",
    "Status",
    "StepStatus",
    "UnknownStage",
    "WatchEvent",
    "WatchKind",
    "run_job",
    "alarm_reader",
    "build_fleet",
    "make_watcher",
    "stack_name",
]
