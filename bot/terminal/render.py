"""What the command line shows people: listings, plans, live progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

from bot.core.cards import AppCard
from bot.core.jobs import Job, JobState
from bot.core.stage_index import Artifact, StageIndex
from bot.core.text import clean
from bot.engine import STEPS, Event, EventStatus, Plan


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_listing(index: StageIndex, limit: int, now: float) -> str:
    lines = []
    live = index.live
    head = f"{index.service} / {index.stage}: "
    head += f"live {live.commit[:7]} (build {live.build_id}) for {age(now - live.at)}" if live else "nothing live"
    head += f", {len(index.artifacts)} build{'s' if len(index.artifacts) != 1 else ''}"
    lines.append(head)
    if index.freeze:
        f = index.freeze
        lines.append(f"FROZEN by {f.by or 'unknown'} {age(now - f.at)} ago: {f.reason}")
    if not index.artifacts:
        lines.append("No builds yet: CI publishes them with `rollback-bot publish`.")
        return "\n".join(lines)
    rows = [("", "SHA", "BUILD", "AGE", "AUTHOR", "MESSAGE")]
    for art in index.artifacts[:limit]:
        mark = "live" if index.is_live(art) else ("BAD" if art.bad else "")
        message = art.message
        if art.bad:
            message = f"[bad: {art.bad.reason} ({art.bad.by})] {message}"
        rows.append((mark, art.short, art.build_id, age(now - art.created), _clip(art.author, 18), _clip(message, 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    if len(index.artifacts) > limit:
        lines.append(f"… {len(index.artifacts) - limit} older builds (--limit to see more)")
    return clean("\n".join(lines))


def artifact_json(index: StageIndex, art: Artifact) -> dict:
    doc = asdict(art)
    doc["live"] = index.is_live(art)
    return doc


def render_plan(plan: Plan, now: float) -> str:
    t = plan.target
    lines = [f"{plan.verb} {plan.where} to {t.commit[:12]} (build {t.build_id}), {age(now - t.created)} old"]
    lines.append(f"  package sha256 {t.sha256[:12]}…, {t.size:,} bytes")
    lines.append(f"  {t.author}: {t.message}")
    if plan.chosen_because:
        lines.append(f"  chosen as `previous`: {plan.chosen_because}")
    if plan.live:
        live = plan.live
        lines.append(f"Live now: {live.commit[:12]} (build {live.build_id})  {live.author}: {live.message}")
    if plan.commits:
        lines.append(f"Commits {'brought back' if plan.forward else 'undone'} ({len(plan.commits)}):")
        lines += [f"  {c.sha[:7]} {c.author}: {c.subject}" for c in plan.commits]
    if plan.plugins is not None:
        lines.append(plan.plugins.summary().capitalize())
    if plan.template is not None:
        if plan.template.empty:
            lines.append("CloudFormation resources: no resources added or removed")
        for logical, kind in plan.template.removed:
            lines.append(f"  - removes {logical} ({kind})")
        for logical, kind in plan.template.added:
            lines.append(f"  + adds {logical} ({kind})")
    if plan.freeze:
        lines.append(f"CI is frozen on {plan.where} (by {plan.freeze.by}: {plan.freeze.reason})")
    if plan.target.bad:
        bad = plan.target.bad
        lines.append(f"WARNING: {plan.target.label()} is marked bad by {bad.by}: {bad.reason}. Deploying it anyway "
                     "clears the mark.")
    lines += [f"DANGER: {d}" for d in plan.dangers] + [f"WARNING: {w}" for w in plan.warnings]
    return clean("\n".join(lines))


class ProgressPrinter:
    """Prints a job's steps and the deploy output as they happen."""

    ICONS = {"started": "…", "finished": "✔", "failed": "✘", "skipped": "-"}

    def __init__(self, job_id: int, out: TextIO = sys.stdout, show_output: bool = True):
        self.job_id = job_id
        self.out = out
        self.show_output = show_output

    def __call__(self, job_id: int, event: Event) -> None:
        if job_id != self.job_id:
            return
        if event.status is EventStatus.OUTPUT:
            if self.show_output:
                print(f"    {clean(event.text)}", file=self.out, flush=True)
            return
        if event.step in STEPS:
            n = STEPS.index(event.step) + 1
            took = f" ({event.duration:.1f}s)" if event.duration is not None else ""
            detail = f": {clean(event.text)}" if event.text else ""
            print(f"[{n}/{len(STEPS)}] {self.ICONS.get(event.status, '')} {event.step}{took}{detail}",
                  file=self.out, flush=True)


def render_app_plan(card: AppCard, stage: str) -> str:
    """An app rollback's plan (what its card shows): a line per service, the order, the warnings."""
    title = (f"Undo the newest deploy of {stage}" if card.ref.lower() == "previous"
             else f"Roll back the app in {stage} to {card.commit[:12]}")
    lines = [title]
    for s in card.services:
        if s.moves and s.target:
            frm = s.live[0][:7] if s.live else "?"
            lines.append(f"  {s.service:<20} {frm} → {s.target[0][:7]} (build {s.target[1]}), "
                         f"{s.commits} commit(s){', ' + s.plugins if s.plugins else ''}"
                         f"{', ' + s.account if s.account else ''}")
        else:
            lines.append(f"  {s.service:<20} left as it is: {s.note}")
    order = " → ".join(f"{n}. {', '.join(p)}" for n, p in enumerate(card.phases, start=1))
    lines.append(f"Order ({'deploy order' if card.forward else 'dependents first'}): {order}")
    lines += [f"warning: {w}" for w in card.warnings]
    return clean("\n".join(lines))


def render_history(jobs: list[Job], now: float, name: Callable[[str], str] = lambda who: who,
                   parts: dict[int, list[Job]] | None = None) -> str:
    """Each run as the incident review needs it: when, how long, who asked and who approved, from →
    to, the outcome and why, and where its card is."""
    if not jobs:
        return "No rollbacks yet."
    lines = []
    for j in jobs:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(j.started or j.created))
        took = f" in {j.duration:.0f}s" if j.duration is not None and j.finished else ""
        if j.is_app:
            lines.append(f"#{j.id:<4} {when}  {j.state}{took}  {j.where} → {j.target_commit[:7] or 'previous'}")
        else:
            lines.append(f"#{j.id:<4} {when}  {j.state}{took}  {j.live_commit[:7] or '?'} "
                         f"(build {j.live_build or '?'}) → {j.target_commit[:7]} (build {j.target_build})")
        who = f"      requested by {name(j.requested_by) or '?'}, approved by {name(j.approved_by) or '-'}"
        if j.cancelled_by:
            who += f", cancelled by {name(j.cancelled_by)}"
        lines.append(who)
        if j.reason:
            lines.append(f"      why: {j.reason}")
        if j.permalink:
            lines.append(f"      card: {j.permalink}")
        for p in (parts or {}).get(j.id, []):
            lines.append(f"      {p.service}: {p.state} {p.live_commit[:7] or '?'} → {p.target_commit[:7]}"
                         + (f" ({p.reason})" if p.reason and p.state is not JobState.SUCCEEDED else ""))
    return clean("\n".join(lines))


def render_status(running: list[Job], freezes: dict, now: float, name: Callable[[str], str] = lambda who: who,
                  parts: dict[int, list[Job]] | None = None) -> str:
    """Running rollbacks (an app's services under it) with the process that runs each, and frozen stages."""
    lines = ["Running rollbacks:" if running else "Running rollbacks: none"]
    for j in running:
        to = f"{j.target_commit[:7] or 'previous'}" + (f" (build {j.target_build})" if j.target_build else "")
        who = name(j.approved_by or j.requested_by) or "?"
        lines.append(f"  #{j.id} {j.where} → {to}, by {who}, for {age(now - (j.started or now))}"
                     + (f", cancel asked by {name(j.cancelled_by)}" if j.cancelled_by else "")
                     + (f", process {j.pid} on {j.host}" if j.pid else ""))
        for p in (parts or {}).get(j.id, []):
            lines.append(f"      {p.service}: {'waiting for its phase' if p.state is JobState.APPROVING else p.state}")
    lines.append("Frozen stages:" if freezes else "Frozen stages: none")
    for key, mark in freezes.items():
        lines.append(f"  {key.service} {key.stage}: by {mark.by or 'unknown'} {age(now - mark.at)} ago: {mark.reason}")
    return clean("\n".join(lines))
