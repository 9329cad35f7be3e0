"""App rollbacks: every service of a stage back to one commit, in a safe order.

The target of each service is its newest published build whose commit is the one asked for or an
ancestor of it (pipelines deploy only what changed). A service already there, or with no build that
old, is left alone. Services roll back in the reverse of their deploy order, dependents first: a
newer dependent may import an export its producer's older template no longer has. Services of one
phase run at the same time, bounded by a setting.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from bot.adapters.archive import TEMPLATE_NAME
from bot.adapters.artifacts import ArtifactError
from bot.core.cards import AppCard, ServiceRow
from bot.core.errors import UserError
from bot.core.jobs import Job, JobState, Recorded
from bot.core.keys import StageKey
from bot.core.stage_index import Artifact, StageIndex
from bot.engine.build import Engine, Fleet
from bot.engine.planner import Plan, template_exports, template_imports

log = logging.getLogger("rollback-bot.engine.app")
class StepStatus(StrEnum):
    """What an app rollback does with one service."""

    ROLL = "roll"  # it moves
    AT_TARGET = "at_target"  # already live at its target
    NO_BUILD = "no_build"  # no build at or before the commit: left as it is, with a warning
    UNTOUCHED = "untouched"  # not part of this move


ROLL, AT_TARGET, NO_BUILD, UNTOUCHED = StepStatus.ROLL, StepStatus.AT_TARGET, StepStatus.NO_BUILD, StepStatus.UNTOUCHED


@dataclass
class ServiceStep:
    service: str
    status: StepStatus
    plan: Plan | None = None
    live: Artifact | None = None
    note: str = ""


@dataclass
class AppPlan:
    stage: str
    ref: str  # a commit, `previous`, or `undo:<app job>`
    commit: str  # the full commit asked for ("" for previous and undo)
    steps: list[ServiceStep]
    phases: list[list[str]]  # the order of the services that move: dependents first (forward: producers first)
    warnings: list[str] = field(default_factory=list)
    forward: bool = False  # every service moves to a newer build (rolling forward again)

    @property
    def rolling(self) -> list[ServiceStep]:
        return [s for s in self.steps if s.status == ROLL]

    def step(self, service: str) -> ServiceStep:
        return next(s for s in self.steps if s.service == service)

    def summary(self) -> dict:
        """What the card showed, compared again at the click (each moving service's own plan summary)."""
        return {s.service: s.plan.summary() if s.plan else s.status for s in self.steps}


def _index_of(engine: Engine, stage: str) -> StageIndex:
    return engine.artifacts.read_index(stage)


def _template(engine: Engine, art: Artifact | None) -> dict:
    if art is None:
        return {}
    try:
        raw = engine.artifacts.read_members(art, [TEMPLATE_NAME]).get(TEMPLATE_NAME)
        doc = json.loads(raw) if raw else {}
    except (ArtifactError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def make_app_plan(fleet: Fleet, stage: str, ref: str, targets: dict[str, tuple[str, str]] | None = None) -> AppPlan:
    """Plan the app back to commit ``ref`` (a SHA or prefix), to ``previous`` (the newest deploy undone),
    or to explicit ``targets`` (service → (commit, build id): rolling finished services forward again)."""
    engines = fleet.engines
    with ThreadPoolExecutor(max_workers=min(16, len(engines))) as pool:
        indexes = dict(zip(engines, pool.map(lambda e: _index_of(e, stage), engines.values()), strict=True))
    if not any(i.artifacts for i in indexes.values()):
        raise UserError(f"No service has builds in `{stage}`. Stages with builds: "
                        + (", ".join(sorted({s for e in engines.values() for s in e.artifacts.stages()})) or "none"))
    chosen: dict[str, Artifact | None] = {}
    commit, steps = "", []
    if targets is not None:
        for name, index in indexes.items():
            ident = targets.get(name)
            chosen[name] = index.find(*ident) if ident else None
    elif ref.strip().lower() == "previous":
        # the newest deploy: the services whose live build is at the stage's newest live commit
        lives = [(i.live, name) for name, i in indexes.items() if i.live]
        if not lives:
            raise UserError(f"Nothing is recorded as live in `{stage}`, so `previous` means nothing there.")
        newest = max(lives, key=lambda pair: pair[0].at)[0].commit
        for name, index in indexes.items():
            found = index.previous() if index.live and index.live.commit == newest else None
            chosen[name] = found[0] if found else None
    else:
        source = fleet.default.source
        source.fetch()
        commit = source.commit(ref.strip()).sha  # refuses a commit the repository does not have
        older = source.ancestors(commit)
        for name, index in indexes.items():
            chosen[name] = next((a for a in index.artifacts if a.commit in older), None)  # newest first

    warnings: list[str] = []
    for name, index in indexes.items():
        live = index.live_artifact()
        target = chosen[name]
        if targets is None and ref.strip().lower() == "previous" and target is None:
            steps.append(ServiceStep(name, UNTOUCHED, live=live, note="not part of the newest deploy"))
        elif target is None and targets is not None:
            steps.append(ServiceStep(name, UNTOUCHED, live=live, note="not moved by that job"))
        elif target is None:
            steps.append(ServiceStep(name, NO_BUILD, live=live, note=f"no build at {commit[:7]} or before"))
            if index.artifacts:
                warnings.append(f"{name} has no build at {commit[:7]} or before it: it is left as it is.")
        elif live is not None and live.ident == target.ident:
            steps.append(ServiceStep(name, AT_TARGET, live=live, note="already at its target"))
        else:
            steps.append(ServiceStep(name, ROLL, live=live))
    # each moving service's own plan (fetch, commits undone, plugin change, template diff), in parallel
    moving = [s for s in steps if s.status == ROLL]
    if not moving:
        raise UserError(f"Nothing to do in `{stage}`: every service is at its target or has no build for it.")
    already = {str(fleet.default.source.mirror_dir)} if commit else set()  # fetched to resolve the commit
    for mirror, engine in {str(engines[s.service].source.mirror_dir): engines[s.service] for s in moving}.items():
        if mirror not in already:
            engine.source.fetch()  # once per repository, not once per service
    with ThreadPoolExecutor(max_workers=min(8, len(moving))) as pool:
        plans = list(pool.map(lambda s: engines[s.service].plan(stage, chosen[s.service].commit,
                                                                chosen[s.service].build_id, fetch=False), moving))
    for step, plan in zip(moving, plans, strict=True):
        step.plan = plan
        plan.ref = ref
    # Back: dependents first (a newer dependent may import what its producer's older template lacks).
    # Forward again (every service moves to a newer build): the deploy order, producers first.
    order = fleet.catalog.phases([s.service for s in moving])
    forward = all(s.plan.forward for s in moving)
    phases = [list(p) for p in (order if forward else reversed(order))]
    # said once for the app, not once per service
    shared = sorted({w for p in plans for w in p.warnings if w.startswith("Jobs run unsandboxed")})
    dangers = [f"🛑 {s.service}: {d}" for s in moving for d in s.plan.dangers]  # before anything else
    app = AppPlan(stage, ref, commit, steps, phases, [*dangers, *warnings, *shared], forward)
    app.warnings += _export_warnings(fleet, app)
    return app


def _export_warnings(fleet: Fleet, app: AppPlan) -> list[str]:
    """Exports and imports after the rollback: an export removed that a live stack still imports, and an
    import that nothing will provide."""
    with ThreadPoolExecutor(max_workers=min(16, len(app.steps))) as pool:
        live_templates = dict(zip([s.service for s in app.steps],
                                  pool.map(lambda s: _template(fleet.engines[s.service], s.live), app.steps),
                                  strict=True))
    after_exports: dict[str, frozenset[str]] = {}
    after_imports: dict[str, frozenset[str]] = {}
    for s in app.steps:
        if s.plan is not None:
            after_exports[s.service], after_imports[s.service] = s.plan.exports, s.plan.imports
        else:
            tpl = live_templates[s.service]
            after_exports[s.service], after_imports[s.service] = template_exports(tpl), template_imports(tpl)
    provided = set().union(*after_exports.values()) if after_exports else set()
    warnings = []
    for s in app.rolling:
        removed = template_exports(live_templates[s.service]) - s.plan.exports
        for export in sorted(removed):
            users = sorted(o for o, imports in after_imports.items() if export in imports and o != s.service)
            if users:
                warnings.append(f"{s.service}'s target removes the export `{export}`, which {', '.join(users)} "
                                "still import(s) after the rollback: CloudFormation will refuse that deploy.")
    for name, imports in after_imports.items():
        for missing in sorted(imports - provided):
            warnings.append(f"{name} imports `{missing}`, which no service will export after the rollback.")
    return warnings


def app_card_json(app: AppPlan) -> str:
    """What an app job stores of its plan: the summary approval is compared with, and what the cards show."""
    return AppCard(app.ref, app.commit, tuple(ServiceRow(
        s.service, str(s.status), s.note,
        (s.live.commit, s.live.build_id) if s.live else None,
        (s.plan.target.commit, s.plan.target.build_id) if s.plan else None,
        len(s.plan.commits) if s.plan else 0,
        s.plan.plugins.summary() if s.plan and s.plan.plugins else "",
        len(s.plan.template.removed) if s.plan and s.plan.template else 0,
        s.plan.account if s.plan else "") for s in app.steps),
        tuple(tuple(p) for p in app.phases), tuple(app.warnings), app.forward, app.summary()).to_json()


NOT_STARTED = "not started: an earlier phase failed or the rollback was cancelled"


def skip_unstarted(store, parts: dict[str, int], reason: str,
                   free_lease: Callable[[str, Job], None] = lambda name, job: None) -> dict[str, Job]:
    """The services of an app rollback that never started become skipped and free their lock and their
    lease in S3. Returns every service's job row as it is now."""
    for name, job_id in parts.items():
        job = store.job(job_id)
        if job.state == JobState.APPROVING:  # approved with the app, waiting for its phase
            store.update_job(job_id, state=JobState.SKIPPED, finished=time.time(), reason=reason)
            store.release_lock(StageKey(name, job.stage), job_id)
            free_lease(name, job)
    return {name: store.job(job_id) for name, job_id in parts.items()}


def who_is_where(parts: dict[str, Job]) -> str:
    """"at the target: api; failed: billing (why); …": what an app rollback left, service by service."""
    def named(*states: str, why: bool = False) -> str:
        return ", ".join(f"{n} ({j.reason or '?'})" if why else n
                         for n, j in parts.items() if j.state in states)

    done = [n for n, j in parts.items() if j.state == JobState.SUCCEEDED]
    words = [f"{label}: {names}" for label, names in (
        ("at the target", named(JobState.SUCCEEDED)),
        ("failed", named(JobState.FAILED, why=True)),
        ("interrupted", named(JobState.INTERRUPTED, why=True)),
        ("cancelled", named(JobState.CANCELLED)),
        ("unchanged (not started)", named(JobState.SKIPPED)),
        ("index.json not yet updated (CI NOT frozen) for",
         ", ".join(n for n in done if parts[n].recorded == 0)),
        ("deployed but not recorded (the stage moved on while it ran; CI not frozen) for",
         ", ".join(n for n in done if parts[n].recorded == Recorded.STALE))) if names]
    return "; ".join(words)


ELSEWHERE_EVERY = 3.0  # seconds between reads of the app's ticket for a Cancel clicked on another replica


class AppRun:
    """Runs an approved app rollback's phases on a thread of its own: each phase's services at once
    (at most ``concurrency``), the next phase only when every service of this one succeeded."""

    def __init__(self, fleet: Fleet, app_id: int, app: AppPlan, parts: dict[str, int], requested_by: str,
                 approved_by: str, concurrency: int = 4, on_failure: str = "finish",
                 notify: Callable[[int, str], None] = lambda app_id, what: None, audit: dict | None = None,
                 asked_elsewhere: Callable[[], str] = lambda: ""):
        self.fleet, self.app_id, self.app, self.parts = fleet, app_id, app, parts
        self.asked_elsewhere = asked_elsewhere  # a Cancel clicked on another replica: who (its plan's ticket)
        self._last_asked = 0.0
        self.requested_by, self.approved_by = requested_by, approved_by
        self.concurrency, self.on_failure, self.notify = max(1, concurrency), on_failure, notify
        self.audit = audit or {}
        self.cancelled = threading.Event()
        self.store = fleet.store
        self.thread = threading.Thread(target=self._run, name=f"app-rollback-{app_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def cancel(self, by: str) -> None:
        """Stop: no phase starts any more, and the services running now are cancelled."""
        self.cancelled.set()
        for name, job_id in self.parts.items():
            job = self.store.job(job_id)
            if job and job.state == JobState.RUNNING:
                self.fleet.engine(name).jobs.cancel(job_id, by)

    def _cancel_asked(self) -> None:
        """A cancel asked for by another process (a terminal, or a Slack bot for a terminal's run)
        reaches this run through the store."""
        if not self.cancelled.is_set():
            by = getattr(self.store.job(self.app_id), "cancelled_by", "")
            if not by and time.monotonic() - self._last_asked >= ELSEWHERE_EVERY:
                self._last_asked = time.monotonic()
                by = self.asked_elsewhere()
                if by:
                    self.store.update_job(self.app_id, cancelled_by=by)
            if by:
                self.cancel(by)

    def _run(self) -> None:
        failed = False
        try:
            for number, phase in enumerate(self.app.phases, start=1):
                self._cancel_asked()
                if failed or self.cancelled.is_set():
                    break
                self.notify(self.app_id, f"phase {number}")
                if number > 1 and not self._still_as_approved(phase):
                    failed = True
                    break
                failed = not self._phase(phase)
        except Exception:
            log.exception("app rollback %s stopped unexpectedly", self.app_id)
            failed = True
        finally:
            self._finish()

    def _still_as_approved(self, services: list[str]) -> bool:
        """Plan a later phase's services again before any of them starts: one whose plan changed since
        the approval (CI deployed it meanwhile, say) is not deployed, and the app stops here."""
        changed = {}
        for name in services:
            approved = self.app.step(name).plan
            try:
                now = self.fleet.engine(name).plan(self.app.stage, approved.target.build_id)
                differs = [what for what, a, b in (
                    ("live", approved.live.ident if approved.live else None, now.live.ident if now.live else None),
                    ("target", approved.target.ident, now.target.ident)) if a != b]
                if differs:
                    was = approved.live.label() if approved.live else "nothing"
                    is_now = now.live.label() if now.live else "nothing"
                    changed[name] = (f"not deployed: its plan changed since the approval (live was {was}, is now "
                                     f"{is_now}: deployed meanwhile); the app stopped before this phase")
            except Exception as exc:  # it cannot be planned now: not deployed either
                why = self.fleet.engine(name).mask(str(exc))
                changed[name] = f"not deployed: it could not be planned again ({why})"
        for name, why in changed.items():
            job_id = self.parts[name]
            self.store.update_job(job_id, state=JobState.FAILED, finished=time.time(), reason=why)
            self.store.release_lock(StageKey(name, self.app.stage), job_id)
            self.fleet.engine(name).jobs.free_lease(self.store.job(job_id))
            self.store.audit("rollback-bot", "rollback.replanned", StageKey(name, self.app.stage), job_id, reason=why)
        return not changed

    def _phase(self, services: list[str]) -> bool:
        started: list[tuple[str, int]] = []
        ok = True
        for chunk in (services[i:i + self.concurrency] for i in range(0, len(services), self.concurrency)):
            batch = []
            for name in chunk:
                if self.cancelled.is_set():
                    return False
                plan = self.app.step(name).plan
                job_id = self.parts[name]
                self.fleet.engine(name).jobs.start(plan, self.requested_by, approved_by=self.approved_by,
                                                   origin="app", job_id=job_id, locked=True, audit=self.audit)
                batch.append((name, job_id))
            started += batch
            waiting = dict(batch)
            while waiting:  # in the order they end: a failure is seen while the others still run
                self._cancel_asked()
                for name, job_id in list(waiting.items()):
                    state = self.store.job(job_id).state
                    if state == JobState.RUNNING:
                        continue
                    del waiting[name]
                    if state != JobState.SUCCEEDED:
                        ok = False
                        if self.on_failure == "cancel":
                            self.cancel("rollback-bot")
                if waiting:
                    time.sleep(0.2)
            for name, job_id in batch:
                self.fleet.engine(name).jobs.wait(job_id)  # its worker has finished recording
            self.notify(self.app_id, "progress")
            if not ok:
                break
        return ok

    def _finish(self) -> None:
        parts = skip_unstarted(self.store, self.parts, NOT_STARTED,
                               lambda name, job: self.fleet.engine(name).jobs.free_lease(job))
        states = {name: job.state for name, job in parts.items()}
        done = [n for n, st in states.items() if st == JobState.SUCCEEDED]
        failed = [n for n, st in states.items() if st in (JobState.FAILED, JobState.INTERRUPTED)]
        unrecorded = [n for n in done if parts[n].recorded == 0]
        stale = [n for n in done if parts[n].recorded == Recorded.STALE]
        state = JobState.SUCCEEDED if len(done) == len(parts) else (
            JobState.CANCELLED if self.cancelled.is_set() and not failed else JobState.FAILED)
        clean = state == JobState.SUCCEEDED and not unrecorded and not stale
        recorded = Recorded.PENDING if unrecorded else Recorded.STALE if stale else Recorded.YES
        self.store.update_job(self.app_id, state=state, finished=time.time(),
                              reason="" if clean else who_is_where(parts), recorded=int(recorded))
        self.store.audit(self.approved_by or self.requested_by, f"app.{state}", StageKey("*", self.app.stage),
                         self.app_id, services=states, **self.audit)
        self.notify(self.app_id, "finished")
