"""What every request to the rollback service names: a stage of a service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageKey:
    service: str
    stage: str

    def __str__(self) -> str:
        return f"{self.service}/{self.stage}"
