"""The commands CI and people run in a terminal: each parses its arguments, calls the rollback
service and prints what it returns.

The composition root (bot/cli.py) reads the settings and calls these; the demo calls ``run`` with its
own settings, so nothing has to pass through the process environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot import __version__
from bot.core.actor import Actor
from bot.core.config import Settings
from bot.core.errors import UserError
from bot.core.jobs import Job, JobState, Recorded
from bot.core.keys import StageKey
from bot.core.masking import Masker
from bot.core.stage_index import RefError
from bot.core.text import clean
from bot.engine import RollbackService, alarm_reader, build_fleet, stack_name
from bot.terminal.render import (
    ProgressPrinter,
    artifact_json,
    render_app_plan,
    render_history,
    render_listing,
    render_plan,
    render_status,
)

DESCRIPTION = """Roll a Serverless Framework service back to an earlier build, the right way.

CI publishes every package (publish, mark-deployed) and asks before deploying (check-freeze); people
roll back from Slack (serve) or, when Slack is down, from here (rollback, cancel, unfreeze)."""
EXIT_FAILED = 1


def _no_names(settings: Settings, service: RollbackService):
    return lambda who: who


@dataclass(frozen=True)
class Outlets:
    """What the terminal may tell Slack or ask it, handed in by the composition root (bot/cli.py, the
    demo): this face never imports another. Without Slack, nothing is posted and ids stay ids."""

    deployed: Callable[[Settings, RollbackService, StageKey, str], None] = lambda settings, service, key, by: None
    names: Callable[[Settings, RollbackService], Callable[[str], str]] = _no_names
EXIT_CONFIG = 2


# -- commands --------------------------------------------------------------------------------------


def cmd_publish(args, settings: Settings, out: Outlets) -> int:
    service = _service(settings)
    key = service.key(args.stage, args.service)
    by = args.by or settings.actor
    result = service.publish(key, args.commit, Path(args.package), args.build_id, args.author, args.message,
                             args.deployed, by)
    art = result.artifact
    verb = "published" if result.uploaded else "already published (unchanged)"
    print(clean(f"{verb}: {args.stage} {art.label()} {art.size} bytes sha256 {art.sha256[:12]}…"))
    if args.deployed:
        print(clean(f"live on {args.stage}: {art.label()}" + ("" if result.went_live else " (already was)")))
        if result.went_live:
            out.deployed(settings, service, key, by)
    return 0


def cmd_mark_deployed(args, settings: Settings, out: Outlets) -> int:
    service = _service(settings)
    key = service.key(args.stage, args.service)
    by = args.by or settings.actor
    art, changed = service.mark_deployed(key, args.commit, args.build_id, by)
    print(clean(f"live on {args.stage}: {art.label()}" + ("" if changed else " (already was)")))
    if changed:
        out.deployed(settings, service, key, by)
    return 0


def cmd_list(args, settings: Settings, out: Outlets) -> int:
    service = _service(settings)
    index = service.builds(service.key(args.stage, args.service))
    if args.json:
        json.dump(
            {
                "service": index.service,
                "stage": index.stage,
                "live": asdict(index.live) if index.live else None,
                "freeze": asdict(index.freeze) if index.freeze else None,
                "builds": [artifact_json(index, a) for a in index.artifacts[: args.limit]],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(render_listing(index, args.limit, time.time()))
    return 0


def cmd_show(args, settings: Settings, out: Outlets) -> int:
    service = _service(settings)
    index, art = service.show(service.key(args.stage, args.service), args.ref)
    if args.json:
        json.dump(artifact_json(index, art), sys.stdout, indent=2)
        print()
    else:
        state = "live" if index.is_live(art) else ("marked bad" if art.bad else "not live")
        print(clean(f"{args.stage} `{args.ref}` → {art.commit} build {art.build_id} ({state})"))
        print(clean(f"  {art.author}: {art.message}"))
        if art.bad:
            print(clean(f"  marked bad by {art.bad.by}: {art.bad.reason}"))
        print(f"  {art.size} bytes, sha256 {art.sha256}, s3://{settings.bucket}/{art.key}")
    return 0


def cmd_prune(args, settings: Settings, out: Outlets) -> int:
    service = _service(settings)
    result = service.prune(service.key(args.stage, args.service), args.keep, args.by or settings.actor or "ci",
                           dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for art in result.removed:
        print(clean(f"{verb} {art.label()}"))
    for ident, why in result.protected.items():
        print(clean(f"kept {ident[0][:7]} (build {ident[1]}): {why}"))
    print(f"{verb} {len(result.removed)}, kept {len(result.kept)}")
    for key in result.failed_deletes:
        print(f"warning: s3://{settings.bucket}/{key} could not be deleted; remove it by hand", file=sys.stderr)
    return 0


def _service(settings: Settings) -> RollbackService:
    return RollbackService(build_fleet(settings), settings.policy)


def cmd_rollback(args, settings: Settings, out: Outlets) -> int:
    service = _service(settings)
    service.recover()  # a crash's leftovers hold nothing any more, and say so
    service.housekeeping()
    actor = Actor.at_terminal(args.by or settings.actor)
    if service.several and not args.service:  # no service named: the whole app back to one commit
        return _rollback_app(args, service, actor)
    key = service.key(args.stage, args.service)
    pending = service.request(key, args.ref, actor)
    plan = pending.plan
    where = plan.where  # "api in prod" on a bot of several services
    flag = f"--service {key.service} " if service.several else ""
    print(render_plan(plan, time.time()))
    if plan.account:
        print(f"  AWS: {plan.account}")
    if args.unfreeze and not plan.forward:
        service.withdraw(pending.job_id, actor)
        raise UserError("--unfreeze applies to a roll forward only; a rollback freezes CI")
    if not _confirmed(args, where, service, pending.job_id, actor):
        return EXIT_FAILED
    unsubscribe = service.follow(pending.job_id, ProgressPrinter(pending.job_id, show_output=not args.quiet))
    try:
        job_id = service.approve(pending.job_id, actor, unfreeze=args.unfreeze).job.id
    except UserError:
        unsubscribe()
        with contextlib.suppress(UserError):  # refused before anything ran: the plan is not left waiting
            service.withdraw(pending.job_id, actor)
        raise
    print(f"job {job_id} started")
    try:
        job = service.wait(job_id)
    except KeyboardInterrupt:
        print("\ncancelling: stopping the job's processes…", file=sys.stderr)
        service.cancel_job(job_id, actor)
        job = service.wait(job_id)
    took = (job.finished or 0) - (job.started or 0)
    if job.state is JobState.SUCCEEDED and job.recorded == Recorded.STALE:
        print(clean(f"job {job_id} DEPLOYED, NOT RECORDED: {job.reason}"), file=sys.stderr)
    if job.state is JobState.SUCCEEDED and job.recorded == 0:
        print(f"job {job_id} SUCCEEDED, CI NOT FROZEN: {where} runs {plan.target.label()} (verified), but "
              "index.json could not be updated, so CI may deploy over it and nothing is marked bad. Retrying for "
              f"up to {RECORD_WAIT:.0f}s…", file=sys.stderr)
        job = _wait_recorded(service, job_id, RECORD_WAIT)
        if job.recorded != 1:
            service.shutdown()
            print(f"index.json is still not updated. Start `rollback-bot serve` with this data dir (it keeps "
                  f"retrying), or freeze CI by hand; then check `rollback-bot list {flag}{args.stage}`.",
                  file=sys.stderr)
            return 0
        print(clean(f"index.json updated after retrying: {job.reason}"), file=sys.stderr)
    service.shutdown()
    if job.state is JobState.SUCCEEDED:
        if plan.forward:
            lifted = "; the CI freeze was lifted" if args.unfreeze else ""
            print(f"job {job_id} succeeded in {took:.1f}s: rolled forward, {where} runs {plan.target.label()}"
                  f"; nothing marked bad{lifted}")
            return 0
        print(f"job {job_id} succeeded in {took:.1f}s: {where} runs {plan.target.label()}; CI is frozen "
              f"on {where} until `rollback-bot unfreeze {flag}{args.stage}`")
        return 0
    print(clean(f"job {job_id} {job.state} after {took:.1f}s: {job.reason}"), file=sys.stderr)
    tail = service.log_tail(job_id, 20)
    if tail:
        print(clean("last lines of the log:\n  " + "\n  ".join(tail)), file=sys.stderr)
    return EXIT_FAILED


RECORD_WAIT = 120.0


def _confirmed(args, where: str, service: RollbackService, job_id: int, actor: Actor) -> bool:
    """The typed confirmation is the approval at a terminal; anything else withdraws the plan."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        service.withdraw(job_id, actor)
        print("rollback-bot: not a terminal, so nothing to confirm with; pass --yes to go ahead", file=sys.stderr)
        return False
    if input(f"Deploy this to {where}? Type the stage name to confirm: ").strip() != args.stage:
        service.withdraw(job_id, actor)
        print("Nothing was done.")
        return False
    return True


def _rollback_app(args, service: RollbackService, actor: Actor) -> int:
    """Every service of the stage to its newest build at or before the commit, as in Slack."""
    pending = service.apps.request(args.stage, args.ref, actor)
    print(render_app_plan(service.job(pending.job_id).app_card, args.stage))
    for busy in pending.busy:
        print(clean(f"  busy: {busy}"))
    if not _confirmed(args, args.stage, service, pending.job_id, actor):
        return EXIT_FAILED
    try:
        app_id = service.approve(pending.job_id, actor).job.id
    except UserError:
        with contextlib.suppress(UserError):  # refused before anything ran: the plan is not left waiting
            service.withdraw(pending.job_id, actor)
        raise
    print(f"app job {app_id} started")
    said: dict[int, str] = {}
    try:
        while service.job(app_id).state is JobState.RUNNING:
            _say_parts(service, app_id, said)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\ncancelling: no further phase starts; stopping the running services…", file=sys.stderr)
        service.cancel_job(app_id, actor)
    job = service.wait(app_id)
    _say_parts(service, app_id, said)
    service.shutdown()
    if job.state is JobState.SUCCEEDED and not job.reason:
        print(f"app job {app_id} succeeded: every service runs its target; CI is frozen on the services that moved")
        return 0
    print(clean(f"app job {app_id} {job.state}: {job.reason}"), file=sys.stderr)
    return 0 if job.state is JobState.SUCCEEDED else EXIT_FAILED


def _say_parts(service: RollbackService, app_id: int, said: dict[int, str]) -> None:
    for part in service.parts(app_id):
        # approved with the app; "approving" is how a service waits for its phase
        state = "waiting for its phase" if part.state == JobState.APPROVING else str(part.state)
        if said.get(part.id) != state:
            said[part.id] = state
            took = f" in {part.duration:.1f}s" if part.finished and part.duration is not None else ""
            print(clean(f"  [{part.service}] {state}{took}" + (f": {part.reason}" if part.reason else "")))


def _wait_recorded(service: RollbackService, job_id: int, timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    job = service.job(job_id)
    while job.recorded == 0 and time.monotonic() < deadline:
        time.sleep(1)
        job = service.job(job_id)
    return job


def cmd_check_freeze(args, settings: Settings, out: Outlets) -> int:
    """For CI: may this stage be deployed (with this commit)? Needs only read access to the bucket."""
    service = _service(settings)
    check = service.check_freeze(service.key(args.stage, args.service), args.commit or "")
    for p in check.problems:
        print(clean(f"rollback-bot: {p}"), file=sys.stderr)
    if not check.problems and (hint := service.stage_hint(service.key(args.stage, args.service))):
        print(clean(f"rollback-bot: warning: {hint}"), file=sys.stderr)  # a typo would check nothing
    if not check.problems:
        print(f"{args.stage}: not frozen" + (f", {args.commit[:12]} not marked bad" if args.commit else ""))
    return EXIT_FAILED if check.problems else 0


def cmd_unfreeze(args, settings: Settings, out: Outlets) -> int:
    """The policy decides, as in Slack: the operator (--by, ROLLBACK_ACTOR) must be one of the stage's approvers."""
    service = _service(settings)
    was = service.unfreeze(service.key(args.stage, args.service), Actor.at_terminal(args.by or settings.actor))
    print(clean(f"{args.stage}: unfrozen (was: {was})" if was else f"{args.stage}: was not frozen"))
    return 0


CANCEL_WAIT = 60.0  # seconds the terminal waits for a cancelled job to end (SIGKILL comes after 5)


def cmd_cancel(args, settings: Settings, out: Outlets) -> int:
    """Stop a running rollback on this machine, whichever process runs it: the Slack bot's, or another
    terminal's. The policy decides, as for the Cancel button: the requester, the approver or an approver."""
    service = _service(settings)
    actor = Actor.at_terminal(args.by or settings.actor)
    stage = args.stage
    before = [j.id for j in service.running(stage) if not j.app_id]
    if service.several and not args.service:  # the app rollback running in the stage, or the only one
        said = service.cancel_in_stage(stage, actor)
    else:
        said = service.cancel_running(service.key(stage, args.service), actor)
    print(clean(said))
    deadline = time.monotonic() + CANCEL_WAIT
    while True:  # until the job it cancelled (or found dead) has ended
        jobs = [j for j in map(service.job, before)
                if j.state is not JobState.RUNNING or j.cancelled_by == actor.user]
        if all(j.state is not JobState.RUNNING for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for job in jobs:
        what = "app job" if job.is_app else "job"
        if job.state is JobState.RUNNING:
            print(f"{what} {job.id} is still stopping after {CANCEL_WAIT:.0f}s; see `rollback-bot history "
                  f"{stage}` and the bot's log", file=sys.stderr)
            return EXIT_FAILED
        print(clean(f"{what} {job.id} {job.state}: {job.reason}"))
    return 0


def cmd_status(args, settings: Settings, out: Outlets) -> int:
    """What runs now on this machine, by which process, and which stages are frozen: `/rollback status`
    for when Slack is down."""
    service = _service(settings)
    status = service.status()
    shown = [j for j in status.running if not j.app_id]  # an app's services are shown under it
    parts = {j.id: service.parts(j.id) for j in shown if j.is_app}
    name = out.names(settings, service)
    if args.json:
        json.dump({"running": [{**job_json(j, name), "pid": j.pid, "host": j.host,
                                **({"services": [job_json(p, name) for p in parts[j.id]]} if j.is_app else {})}
                               for j in shown],
                   "frozen": [{"service": k.service, "stage": k.stage, "by": m.by, "reason": m.reason,
                               "since": _iso(m.at)} for k, m in status.freezes.items()]}, sys.stdout, indent=2)
        print()
    else:
        print(render_status(shown, status.freezes, time.time(), name, parts))
    for problem in status.unreadable:  # the others are shown; this one could not be read
        print(clean(f"warning: could not read {problem}"), file=sys.stderr)
    return 0


def cmd_history(args, settings: Settings, out: Outlets) -> int:
    service = _service(settings)
    key = service.key(args.stage, args.service) if args.service or not service.several else None
    jobs = service.history_of(args.stage, key, Actor.at_terminal(args.by or settings.actor), args.limit)
    parts = {j.id: service.parts(j.id) for j in jobs if j.is_app}  # an app rollback is one entry
    name = out.names(settings, service)
    if args.json:
        json.dump([{**job_json(j, name), **({"services": [job_json(p, name) for p in parts[j.id]]}
                                            if j.is_app else {})} for j in jobs], sys.stdout, indent=2)
        print()
    else:
        print(render_history(jobs, time.time(), name, parts))
    return 0


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def job_json(job: Job, name=lambda who: who) -> dict:
    """A run as the incident review reads it: Slack ids with the names they stand for."""
    def person(who: str) -> dict | None:
        return {"id": who, "name": name(who)} if who else None

    return {
        "id": job.id, "service": None if job.is_app else job.service, "stage": job.stage, "state": str(job.state),
        "origin": job.origin,
        "from": {"commit": job.live_commit, "build": job.live_build},
        "to": {"commit": job.target_commit, "build": job.target_build},
        "direction": "forward" if job.forward else "rollback",
        "requested_by": person(job.requested_by), "approved_by": person(job.approved_by),
        "cancelled_by": person(job.cancelled_by),
        "started": _iso(job.started), "finished": _iso(job.finished), "duration_s": job.duration,
        "reason": job.reason or None, "index_recorded": None if job.recorded is None else bool(job.recorded),
        "card": job.permalink or None,
    }


def cmd_audit(args, settings: Settings, out: Outlets) -> int:
    try:
        since = datetime.fromisoformat(args.since)
    except ValueError:
        raise UserError(f"--since {args.since!r} is not a date: give YYYY-MM-DD or an ISO time") from None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    service = _service(settings)
    rows = service.audit(since.timestamp(), service.key(args.stage, args.service) if args.stage else None)
    name = out.names(settings, service)
    if args.json:
        json.dump([{**asdict(r), "at": _iso(r.at), "actor_name": name(r.actor)} for r in rows], sys.stdout,
                  indent=2)
        print()
    else:
        for r in rows:
            print(clean(f"{_iso(r.at)}  {name(r.actor):<14} {r.action:<22} {r.stage or '-':<10} "
                        f"{r.job_id or '':<5} {json.dumps(r.detail, sort_keys=True)}"))
    return 0


def cmd_alarms(args, settings: Settings, out: Outlets) -> int:
    """The alarms the watch reads for a service's stage, their states, and the watches running here."""
    service = _service(settings)
    key = service.key(args.stage, args.service)
    service.may_view(key, Actor.at_terminal(args.by or settings.actor))
    alarms = alarm_reader(service).read(key.stage, key.service, stack_name(service, key))
    names, prefix = settings.catalog.alarm_spec(key.stage, key.service)
    print(f"{key.service} {key.stage}: the alarms of stack {stack_name(service, key)}"
          + (f", and {', '.join(names)}" if names else "") + (f", and every alarm named {prefix}…" if prefix else ""))
    for a in alarms:
        print(clean(f"  {a.state:<18} {a.name}  since {_iso(a.updated)}  {a.reason}"))
    if not alarms:
        print("  (no alarms found)")
    for w in service.watches(key):
        print(clean(f"watching build {w.build} ({w.commit_sha[:7]}) ({w.kind}) until {_iso(w.until)}"))
    return 0


COMMANDS = {
    # name: (handler, what settings it needs)
    "publish": (cmd_publish, ("artifacts",)),
    "mark-deployed": (cmd_mark_deployed, ("artifacts",)),
    "list": (cmd_list, ("artifacts",)),
    "show": (cmd_show, ("artifacts",)),
    "prune": (cmd_prune, ("artifacts",)),
    "rollback": (cmd_rollback, ("engine",)),
    "check-freeze": (cmd_check_freeze, ("artifacts",)),
    "unfreeze": (cmd_unfreeze, ("artifacts",)),
    "cancel": (cmd_cancel, ("engine",)),
    "status": (cmd_status, ("artifacts",)),
    "history": (cmd_history, ()),
    "audit": (cmd_audit, ()),
    "alarms": (cmd_alarms, ("engine",)),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rollback-bot", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings come from the environment (ROLLBACK_BUCKET, ROLLBACK_SERVICE, ROLLBACK_REPO, SLACK_BOT_TOKEN, "
               "...): see docs/configuration.md. `rollback-bot COMMAND --help` explains one command.")
    p.add_argument("--version", action="version", version=f"rollback-bot {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("publish", help="store a `serverless package` folder for a stage (run by CI)")
    s.add_argument("--stage", required=True, help="the stage the package was built for")
    s.add_argument("--commit", required=True, help="the commit the package was built from")
    s.add_argument("--package", required=True, help="the folder given to `serverless package --package`")
    s.add_argument("--build-id", help="CI's build id (default: derived from the package's contents)")
    s.add_argument("--author", help="default: the commit's author, from git")
    s.add_argument("--message", help="default: the commit's subject, from git")
    s.add_argument("--deployed", action="store_true", help="also record it as live on the stage")
    s.add_argument("--by", help="who is publishing (default: CI's actor variable or $USER)")

    s = sub.add_parser("mark-deployed", help="record a published build as live (run by CI after deploy)")
    s.add_argument("--stage", required=True, help="the stage CI deployed")
    s.add_argument("--commit", required=True, help="the commit it deployed")
    s.add_argument("--build-id", help="default: the newest build of that commit")
    s.add_argument("--by", help="who deployed (default: CI's actor variable or $USER)")

    s = sub.add_parser("list", help="a stage's builds, newest first")
    s.add_argument("stage", help="the stage whose builds to list (prod, staging, ...)")
    s.add_argument("--limit", type=int, default=20, help="how many builds (default 20)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("show", help="the build a ref names: SHA, SHA prefix, build id or `previous`")
    s.add_argument("stage", help="the stage")
    s.add_argument("ref", help="a commit SHA (4+ characters), a build id, or `previous`")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("prune", help="delete old builds (never the live or last known-good one)")
    s.add_argument("--stage", required=True, help="the stage to prune")
    s.add_argument("--keep", type=int, required=True, help="how many of the newest builds to keep")
    s.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    s.add_argument("--by", help="who is pruning, for the audit trail (default: CI's actor variable or $USER)")

    s = sub.add_parser("rollback", help="roll a stage back from the terminal (for when Slack is down)")
    s.add_argument("stage", help="the stage to roll back")
    s.add_argument("ref", help="a commit SHA (4+ characters), a build id, or `previous`")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument("--quiet", action="store_true", help="show the steps, not the deploy output")
    s.add_argument("--by", help="who is rolling back (default: $USER)")
    s.add_argument("--unfreeze", action="store_true", help="for a roll forward: also lift the CI freeze")

    s = sub.add_parser("check-freeze", help="for CI: exit 1 while the stage is frozen or the commit is marked bad")
    s.add_argument("--stage", required=True, help="the stage CI is about to deploy")
    s.add_argument("--commit", help="the commit CI is about to deploy (refused when it is marked bad)")

    s = sub.add_parser("unfreeze", help="let CI deploy the stage again after a rollback")
    s.add_argument("stage", help="the frozen stage")
    s.add_argument("--by", help="who is unfreezing (default: $USER); the policy decides, as in Slack")

    s = sub.add_parser("cancel", help="stop a running rollback, the Slack bot's or a terminal's (this machine)")
    s.add_argument("stage", help="the stage whose rollback to stop")
    s.add_argument("--by", help="who is cancelling (default: $USER); the policy decides, as for the Cancel button")

    s = sub.add_parser("status", help="running rollbacks on this machine (which process runs each) and frozen stages")
    s.add_argument("--json", action="store_true", help="machine-readable")

    s = sub.add_parser("history", help="past rollback jobs of a stage (this machine's record)")
    s.add_argument("stage", help="the stage")
    s.add_argument("--by", help="who is asking (the policy's channel rules do not apply at a terminal)")
    s.add_argument("--json", action="store_true", help="machine-readable, for the incident review")
    s.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")

    s = sub.add_parser("audit", help="the audit trail: requests, approvals, refusals, runs, unfreezes")
    s.add_argument("--since", required=True, help="YYYY-MM-DD or an ISO time (UTC unless it says otherwise)")
    s.add_argument("--stage", help="only this stage")
    s.add_argument("--json", action="store_true", help="machine-readable")

    s = sub.add_parser("alarms", help="the alarms the watch reads for a stage, their states, and running watches")
    s.add_argument("stage", help="the stage")
    s.add_argument("--by", help="who is asking (the policy's channel rules do not apply at a terminal)")

    for name, command in sub.choices.items():  # every command of a stage names its service the same way
        command.add_argument("--service", help="which service (default: the only one, or ROLLBACK_SERVICE)"
                             if name != "audit" else "only this service's entries (with --stage)")

    sub.add_parser("serve", help="run the Slack bot")

    s = sub.add_parser("run-job", help="run one job from its spec file (started by the bot; see docs/runner.md)")
    s.add_argument("spec", help="the job spec file the bot wrote; the job's secrets come on stdin")

    s = sub.add_parser("demo", help="try rollback-bot in the browser: a local Slack channel on an embedded AWS")
    s.add_argument("--port", type=int, default=8080, help="the page's port on 127.0.0.1 (default 8080; 0: any free)")
    s.add_argument("--data-dir", help="where the demo keeps its state (default: $ROLLBACK_DATA_DIR/demo)")
    return p


def dispatch(args, settings: Settings, out: Outlets | None = None) -> int:
    """Run one parsed command; a UserError is printed (masked, without control characters) and gives 1."""
    mask = Masker(settings.secrets())
    try:
        return COMMANDS[args.command][0](args, settings, out or Outlets())
    except RefError as exc:
        print(clean(mask(f"rollback-bot: {exc}")), file=sys.stderr)
        for art in exc.candidates:
            print(clean(mask(f"  {art.commit[:12]}  build {art.build_id}  {art.author}: {art.message}")),
                  file=sys.stderr)
        return EXIT_FAILED
    except UserError as exc:
        print(clean(mask(f"rollback-bot: {exc}")), file=sys.stderr)
        return EXIT_FAILED


def run(argv: list[str], settings: Settings, out: Outlets | None = None) -> int:
    """A command line, with settings already read (the demo's CI steps)."""
    return dispatch(build_parser().parse_args(argv), settings, out)
