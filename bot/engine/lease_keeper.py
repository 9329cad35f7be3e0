"""Holding a job's stage lease for as long as the job runs: take it, renew it every third of its time,
let it go. A job whose lease is lost (S3 unreachable past its end, and someone took it over) is
cancelled: two deploys of one stage are what the lease exists to prevent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from bot.adapters.lease import Held, LeaseLost, LeaseStore

log = logging.getLogger("rollback-bot.engine.lease")


class LeaseKeeper:
    def __init__(self, leases: LeaseStore, on_lost: Callable[[int, str], None]):
        self.leases = leases
        self.on_lost = on_lost  # (job id, why): the job's runner cancels it
        self._held: dict[int, Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, stage: str, job_id: int, approved_by: str, requested_by: str, origin: str, pid: int,
             several: bool = False, plan: str = "") -> Held:
        """Raises StageBusy (naming the holder) or LeaseUnavailable; nothing is held then."""
        return self._keep(job_id, self.leases.acquire(stage, job_id, approved_by, requested_by, origin, pid, several,
                                                      plan))

    def adopt(self, stage: str, job_id: int, token: str, pid: int) -> Held:
        """Hold, from now on here, the lease a job took in a process that is gone (LeaseLost: not its own now)."""
        return self._keep(job_id, self.leases.adopt(stage, token, pid))

    def _keep(self, job_id: int, held: Held) -> Held:
        with self._lock:
            self._held[job_id] = held
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                name=f"rollback-lease-{self.leases.service}")
                self._thread.start()
        return held

    def holds(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._held

    def drop(self, job_id: int) -> None:
        with self._lock:
            held = self._held.pop(job_id, None)
        if held is not None and not self.leases.release(held):
            log.warning("job %s: its lease of %s was no longer its own when it ended", job_id, held.lease.stage)

    def stop(self) -> None:
        self._stop.set()

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(1.0, self.leases.ttl / 3)):
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                held = dict(self._held)
            for job_id, h in held.items():
                try:
                    renewed = self.leases.renew(h)
                except LeaseLost as exc:
                    with self._lock:
                        self._held.pop(job_id, None)
                    log.error("job %s: %s; stopping it", job_id, exc)
                    self.on_lost(job_id, str(exc))
                    continue
                except (ClientError, BotoCoreError):  # S3 failing: keep the old one, try again next round
                    log.warning("job %s: could not renew its lease; trying again", job_id, exc_info=True)
                    continue
                with self._lock:
                    if job_id in self._held:
                        self._held[job_id] = renewed
