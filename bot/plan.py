"""What a rollback would do, worked out before anyone approves it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.archive import PackageError
from bot.artifacts import ArtifactError, ArtifactStore
from bot.source import CommitInfo, PluginChange, SourceRepo
from bot.stack import PackageInfo, Stack, StackError, TemplateDiff
from bot.stage_index import Artifact, Mark, StageIndex


class UnknownStage(ArtifactError):
    pass


@dataclass
class Plan:
    stage: str
    ref: str
    target: Artifact
    live: Artifact | None
    chosen_because: str = ""  # for `previous`
    commits: list[CommitInfo] = field(default_factory=list)  # what the rollback undoes
    plugins: PluginChange | None = None
    template: TemplateDiff | None = None
    stack_name: str = ""
    region: str = ""
    freeze: Mark | None = None
    warnings: list[str] = field(default_factory=list)


def load_stage(artifacts: ArtifactStore, stage: str) -> StageIndex:
    """The stage's index; a stage with no index is unknown, and the message names the known ones."""
    index = artifacts.read_index(stage)
    if not index.artifacts:
        known = artifacts.stages()
        hint = f" Known stages: {', '.join(known)}." if known else " No stage has builds yet."
        raise UnknownStage(f"Stage `{stage}` has no builds.{hint} CI adds builds with `rollback-bot publish`.")
    return index


def make_plan(
    artifacts: ArtifactStore,
    source: SourceRepo,
    stage: str,
    ref: str,
    stack_factory: Callable[[str, str], Stack] = Stack,
    build_id: str | None = None,
) -> Plan:
    """``build_id`` with a full commit as ``ref`` names one build exactly (an approved card)."""
    index = load_stage(artifacts, stage)
    target = index.find(ref, build_id) if build_id else index.resolve(ref)
    if target is None:
        raise ArtifactError(f"build {build_id} of {ref[:7]} is no longer in stage {stage}'s index (pruned?)")
    live = index.live_artifact()
    plan = Plan(stage=stage, ref=ref, target=target, live=live, freeze=index.freeze)
    if ref.strip().lower() == "previous":
        found = index.previous()
        plan.chosen_because = found[1] if found else ""

    source.fetch()
    source.commit(target.commit)  # a commit missing from the repository stops here, before anything runs
    if live is not None and live.commit != target.commit and source.has(live.commit):
        plan.commits = source.commits_between(live.commit, target.commit)
        plan.plugins = source.plugin_change(live.commit, target.commit)

    with tempfile.TemporaryDirectory(prefix="rollback-bot-plan-") as tmp:
        try:
            package_dir = artifacts.download(target, Path(tmp))
            info = PackageInfo.read(package_dir, stage, artifacts.service)
            plan.stack_name, plan.region = info.stack_name, info.region
            plan.template = stack_factory(info.stack_name, info.region).diff(info.template)
        except (StackError, PackageError) as exc:
            plan.warnings.append(f"Template changes unknown: {exc}")

    if target.bad:
        plan.warnings.append(
            f"{target.label()} is marked bad by {target.bad.by}: {target.bad.reason}. "
            "Deploying it anyway clears the mark."
        )
    if live is not None and live.ident == target.ident:
        plan.warnings.append(f"{target.label()} is already live; this redeploys it.")
    if index.live is None:
        plan.warnings.append("No live build is recorded for this stage, so what will be undone is unknown.")
    if plan.template and not plan.template.stack_exists:
        plan.warnings.append(f"Stack {plan.stack_name} does not exist in {plan.region}: this creates it.")
    if plan.template and plan.template.removed:
        plan.warnings.append(
            f"{len(plan.template.removed)} resource(s) will be removed; data in them (tables, buckets) may be lost."
        )
    return plan
