"""What a rollback would do, worked out before anyone approves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.adapters.archive import TEMPLATE_NAME, PackageError
from bot.adapters.artifacts import ArtifactError, ArtifactStore
from bot.adapters.source import CommitInfo, PluginChange, SourceRepo, parse_serverless, plugins_of
from bot.adapters.stack import STATE_NAME, PackageInfo, Stack, StackError, TemplateDiff
from bot.core.names import closest
from bot.core.plugin_effects import plugin_effects
from bot.core.stage_index import Artifact, Mark, StageIndex


class UnknownStage(ArtifactError):
    pass


@dataclass
class Plan:
    stage: str
    ref: str
    target: Artifact
    live: Artifact | None
    service: str = ""
    account: str = ""  # where it deploys: "account 111111111111 (role …), eu-west-1" or the bot's own credentials
    deploy_stage: str = ""  # the --stage given to serverless (default: the stage's name)
    chosen_because: str = ""  # for `previous`
    commits: list[CommitInfo] = field(default_factory=list)  # what the rollback undoes
    plugins: PluginChange | None = None
    template: TemplateDiff | None = None
    stack_name: str = ""
    region: str = ""
    freeze: Mark | None = None
    warnings: list[str] = field(default_factory=list)
    dangers: list[str] = field(default_factory=list)  # what the deploy is known to break: said first, marked 🛑
    forward: bool = False  # the target was published after the live build: a roll forward
    refused_entries: int = 0  # index entries that failed validation (never offered)
    service_dir: str = ""  # the service's folder at the target's commit, when Compose moved it ("": the usual one)
    exports: frozenset[str] = frozenset()  # CloudFormation export names the target's template declares
    imports: frozenset[str] = frozenset()  # … and the ones it imports (Fn::ImportValue)

    @property
    def verb(self) -> str:
        return "Roll forward" if self.forward else "Roll back"

    @property
    def where(self) -> str:
        """``api in prod`` when the bot serves several services (the plan names its account then)."""
        return f"{self.service} in {self.stage}" if self.account else self.stage

    def summary(self) -> dict:
        """What the card shows that an approval approves: compared again at the click, and any
        difference means the approver has not seen what would run."""
        return {
            "target": [self.target.commit, self.target.build_id, self.target.sha256],
            "live": list(self.live.ident) if self.live else None,
            "forward": self.forward,
            "commits": [c.sha for c in self.commits],
            "plugins": [self.plugins.changed, list(self.plugins.files)] if self.plugins else None,
            "removed": sorted(k for k, _ in self.template.removed) if self.template else None,
            "added": sorted(k for k, _ in self.template.added) if self.template else None,
        }


def template_exports(template: dict) -> frozenset[str]:
    """Export names a template declares (Outputs.*.Export.Name), where they are plain strings."""
    outputs = template.get("Outputs") if isinstance(template, dict) else None
    names = set()
    for out in (outputs.values() if isinstance(outputs, dict) else []):
        name = out.get("Export", {}).get("Name") if isinstance(out, dict) and isinstance(out.get("Export"), dict) \
            else None
        if isinstance(name, str):
            names.add(name)
    return frozenset(names)


def template_imports(template: dict, limit: int = 100_000) -> frozenset[str]:
    """Export names a template imports (Fn::ImportValue of a plain string), found anywhere in it."""
    found, stack, seen = set(), [template], 0
    while stack and seen < limit:  # iterative and bounded: a template is data from outside
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            value = node.get("Fn::ImportValue")
            if isinstance(value, str):
                found.add(value)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


def card_json(plan: Plan, ref: str) -> str:
    """What a job stores of its plan: the summary an approval is compared with, the ref asked for, and
    the commits (for the card that keeps the story after approval)."""
    shown = {"service": plan.service, "account": plan.account} if plan.account else {}
    return json.dumps({**plan.summary(), **shown, "ref": ref,
                       "commit_lines": [[c.sha, c.author, c.subject] for c in plan.commits[:50]],
                       "commit_count": len(plan.commits)})


def summary_changes(shown: dict, now: dict) -> list[str]:
    """What differs between the plan a card showed and the plan now, in words."""
    words = {"target": "the target package", "live": "the live build", "forward": "rollback or roll forward",
             "commits": "the commits undone", "plugins": "the plugin change", "removed": "resources removed",
             "added": "resources added"}
    changes = []
    for key, label in words.items():
        if shown.get(key) != now.get(key):
            if key == "live":
                was = (shown.get("live") or ["nothing"])[0][:7]
                is_ = (now.get("live") or ["nothing"])[0][:7]
                changes.append(f"{label} changed from {was} to {is_}")
            elif key == "commits":
                extra = len(set(now.get("commits") or []) - set(shown.get("commits") or []))
                changes.append(f"{label} changed ({len(shown.get('commits') or [])} shown, "
                               f"{len(now.get('commits') or [])} now{f', {extra} new' if extra else ''})")
            else:
                changes.append(f"{label} changed")
    return changes


def load_stage(artifacts: ArtifactStore, stage: str) -> StageIndex:
    """The stage's index; a stage with no index is unknown, and the message names the known ones."""
    index = artifacts.read_index(stage)
    if not index.artifacts:
        known = artifacts.stages()
        hint = f" Known stages: {', '.join(known)}." if known else " No stage has builds yet."
        guess = closest(stage, known)
        if guess:
            raise UnknownStage(f"Stage `{stage}` has no builds: did you mean `{guess}`?{hint}")
        raise UnknownStage(f"Stage `{stage}` has no builds.{hint} CI adds builds with `rollback-bot publish`.")
    return index


def make_plan(
    artifacts: ArtifactStore,
    source: SourceRepo,
    stage: str,
    ref: str,
    stack_factory: Callable[[str, str], Stack] = Stack,
    build_id: str | None = None,
    deploy_stage: str = "",
    account: str = "",
    region: str = "",
    fetch: bool = True,
    dir_at: Callable[[str], str | None] | None = None,
) -> Plan:
    """``build_id`` with a full commit as ``ref`` names one build exactly (an approved card).
    ``deploy_stage`` is the Serverless stage the package must be built for; ``region`` the stage's."""
    index = load_stage(artifacts, stage)
    target = index.find(ref, build_id) if build_id else index.resolve(ref)
    if target is None:
        raise ArtifactError(f"build {build_id} of {ref[:7]} is no longer in stage {stage}'s index (pruned?)")
    live = index.live_artifact()
    plan = Plan(stage=stage, ref=ref, target=target, live=live, service=artifacts.service, account=account,
                deploy_stage=deploy_stage or stage, freeze=index.freeze, forward=index.is_forward(target),
                refused_entries=len(index.refused))
    if ref.strip().lower() == "previous":
        found = index.previous()
        plan.chosen_because = found[1] if found else ""

    if fetch:  # an app plan fetches the shared mirror once for all its services
        source.fetch()
    source.commit(target.commit)  # a commit missing from the repository stops here, before anything runs
    moved = dir_at(target.commit) if dir_at else None  # Compose's folder for the service at that commit
    if moved and moved != source.service_dir:
        source = source.for_dir(moved)
        plan.service_dir = moved
        plan.warnings.append(f"At {target.short} the service's folder is {moved} (its serverless-compose.yml); "
                             "the rollback checks out and deploys that folder.")
    if live is not None and live.commit != target.commit and source.has(live.commit):
        # For a roll forward, the commits it brings back; for a rollback, the commits it undoes.
        plan.commits = (source.commits_between(target.commit, live.commit) if plan.forward
                        else source.commits_between(live.commit, target.commit))
        plan.plugins = source.plugin_change(live.commit, target.commit)

    # What the target's plugins will do during the deploy, beyond updating the stack
    text = source.service_files(target.commit, ["serverless.yml"]).get("serverless.yml")
    config = parse_serverless(text) if text else None
    if config is not None:
        acts, harm = plugin_effects(config, plugins_of(text) or ())
        plan.dangers += harm
        plan.warnings += acts

    # Only the template and the state file are read (ranged GETs), never the whole package.
    members = artifacts.read_members(target, [TEMPLATE_NAME, STATE_NAME])
    try:
        info = PackageInfo.parse(members.get(TEMPLATE_NAME), members.get(STATE_NAME), plan.deploy_stage,
                                 artifacts.service)
        info.check_stage()
    except PackageError as exc:
        raise ArtifactError(f"{target.label()}: {exc}") from exc
    plan.stack_name, plan.region = info.stack_name, info.region
    plan.exports, plan.imports = template_exports(info.template), template_imports(info.template)
    if region and info.region and region != info.region:
        plan.warnings.append(f"The package deploys to {info.region}, but stage {stage} is configured for {region} "
                             "(the catalog's region): check the catalog before approving.")
    if not info.built_for():
        plan.warnings.append("The package has no Lambda code that says which stage it was built for.")
    try:
        plan.template = stack_factory(info.stack_name, info.region).diff(info.template)
    except StackError as exc:
        plan.warnings.append(f"Template changes unknown: {exc}")

    # a bad mark is not in ``warnings``: each face says who marked it in its own way (a name in Slack)
    if live is not None and live.ident == target.ident:
        plan.warnings.append(f"{target.label()} is already live; this redeploys it.")
    if index.live is None:
        plan.warnings.append("No live build is recorded for this stage, so what will be undone is unknown.")
    if index.refused:
        plan.warnings.append(f"{len(index.refused)} entries of this stage's index.json failed validation and are "
                             "ignored (someone wrote to the bucket by hand?): " + "; ".join(
                                 why for _, _, why in index.refused[:3]))
    if plan.template and not plan.template.stack_exists:
        plan.warnings.append(f"Stack {plan.stack_name} does not exist in {plan.region}: this creates it.")
    if plan.template and plan.template.removed:
        plan.warnings.append(
            f"{len(plan.template.removed)} resource(s) will be removed; data in them (tables, buckets) may be lost."
        )
    return plan
