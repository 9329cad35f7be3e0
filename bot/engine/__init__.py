"""The engine: the rollback service (the one door every face uses), its typed views and refusals; behind
it the gate, the approval path, the planner, the pipeline, the job runner and recovery.

Faces import from here and from ``bot.core``, nothing else of the engine's or the adapters'.

Names load on first use (PEP 562): the job runner, started once per job, imports
``bot.engine.job_process`` alone and never pays for sqlite, Slack or the planner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ArtifactError": "bot.adapters.artifacts",
    "Event": "bot.core.events",
    "EventStatus": "bot.core.events",
    "StepStatus": "bot.engine.app",
    "Approved": "bot.engine.approval",
    "Engine": "bot.engine.build",
    "Fleet": "bot.engine.build",
    "build_fleet": "bot.engine.build",
    "run_job": "bot.engine.job_process",
    "STEPS": "bot.engine.pipeline",
    "Plan": "bot.engine.planner",
    "UnknownStage": "bot.engine.planner",
    "Outdated": "bot.engine.refusals",
    "RefusalKind": "bot.engine.refusals",
    "Refused": "bot.engine.refusals",
    "FreezeCheck": "bot.engine.service",
    "Overview": "bot.engine.service",
    "Pending": "bot.engine.service",
    "Recovered": "bot.engine.service",
    "RollbackService": "bot.engine.service",
    "Status": "bot.engine.service",
    "WatchEvent": "bot.engine.watch",
    "WatchKind": "bot.engine.watch",
    "alarm_reader": "bot.engine.watch",
    "make_watcher": "bot.engine.watch",
    "stack_name": "bot.engine.watch",
}

__all__ = [  # a literal, so linters see what the package offers; tests/test_layers.py checks it against _WHERE
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what readers and type checkers see; import-linter and check_cycles see these too
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
