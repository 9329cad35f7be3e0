"""Assemble the rollback engine from validated settings (for the CLI and the Slack app): one Engine per
service of the catalog, in a Fleet that shares one store, one plugin cache, one git mirror per
repository and the stages' AWS accounts."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cached_property

import yaml

from bot.adapters.accounts import Accounts, session_name
from bot.adapters.archive import Limits
from bot.adapters.artifacts import ArtifactStore, make_s3_client
from bot.adapters.lease import LeaseStore
from bot.adapters.plan_board import PlanBoard
from bot.adapters.plugin_cache import PluginCache
from bot.adapters.sandbox import Sandbox, choose, hidden_for
from bot.adapters.source import SourceError, SourceRepo
from bot.adapters.stack import Stack
from bot.adapters.store import Store
from bot.core.catalog import COMPOSE_FILE, Catalog
from bot.core.config import ConfigError, NodeModules, Settings
from bot.core.masking import Masker
from bot.core.variables import VariableSource
from bot.engine.planner import Plan, make_plan
from bot.engine.runner import EngineConfig, JobRunner
from bot.engine.variables import check as check_variables

log = logging.getLogger("rollback-bot.engine")


class Engine:
    """The engine's parts for one service. The sqlite store and the job runner are made on first
    use, so CI's read-only commands (check-freeze, list, show) never touch the local data dir."""

    def __init__(self, settings: Settings, artifacts: ArtifactStore, source: SourceRepo, mask: Masker,
                 shared: Shared | None = None):
        self.settings = settings
        self.artifacts = artifacts
        self.source = source
        self.mask = mask
        self.shared = shared or Shared(settings, mask)

    @property
    def service(self) -> str:
        return self.artifacts.service

    @property
    def store(self) -> Store:
        return self.shared.store

    @property
    def accounts(self) -> Accounts:
        return self.shared.accounts

    @cached_property
    def leases(self) -> LeaseStore:
        """The stage leases in S3, beside index.json: what every replica, terminal and CI's check-freeze see."""
        a = self.artifacts
        return LeaseStore(a.s3, a.bucket, a.prefix, a.service, ttl=float(self.settings.lease_seconds))

    @cached_property
    def plans(self) -> PlanBoard:
        """Pending plans in S3, beside index.json: a click on any replica approves them once."""
        a = self.artifacts
        return PlanBoard(a.s3, a.bucket, a.prefix, a.service)

    @cached_property
    def jobs(self) -> JobRunner:
        s = self.settings
        config = EngineConfig(
            data_dir=s.data_dir, env=s.child_env, step_timeout=float(s.step_timeout),
            deploy_template=s.deploy_command, install_template=s.install_command, plugin_cache_max=s.plugin_cache_max,
            sandbox=self.shared.sandbox, copy_plugins=s.node_modules == NodeModules.COPY,
        )
        # the cache's refills run as chores of the first runner that made it (runner is bound by then)
        runner = JobRunner(config, self.store, self.artifacts, self.source, self.mask, stack_factory=self.stack,
                           aws_env=self.job_env if self.shared.uses_accounts else None,
                           credentials=lambda stage, name: self.accounts.credentials(stage, session_name(name)),
                           variables=self.variables, host_env=s.host_env, leases=self.leases,
                           executor=lambda stage: s.catalog.executor_for(stage, self.service), plans=self.plans,
                           plugin_cache=self.shared.plugin_cache(lambda fn: runner._later(fn)))
        return runner

    def job_env(self, stage: str, name: str) -> dict[str, str]:
        return self.accounts.env_for(stage, session_name(name), fresh=True)

    def stack(self, name: str, region: str) -> Stack:
        """A CloudFormation stack reached with the settings' AWS credentials and endpoint."""
        return Stack(name, region, self.settings.child_env)

    def stage_stack(self, stage: str) -> Callable[[str, str], Stack]:
        """Stacks of ``stage`` read with its account's credentials (for plans)."""
        if not self.shared.uses_accounts:
            return self.stack
        env = self.accounts.env_for(stage, session_name("rollback-bot-plan", self.service, stage))
        return lambda name, region: Stack(name, region, env)

    def shutdown(self) -> None:
        if "jobs" in self.__dict__:
            self.jobs.shutdown()

    def plan(self, stage: str, ref: str, build_id: str | None = None, fetch: bool = True) -> Plan:
        catalog = self.settings.catalog
        account = catalog.account(stage) if catalog.services else None
        plan = make_plan(self.artifacts, self.source, stage, ref, self.stage_stack(stage), build_id,
                         deploy_stage=catalog.serverless_stage(stage) if account else "",
                         account=account.describe() if account and self.shared.uses_accounts else "",
                         region=account.region if account and account.role_arn else "", fetch=fetch,
                         dir_at=self._compose_dir_at)
        self._check_variables(plan)
        runs_on = catalog.executor_for(stage, self.service)
        if runs_on.remote:  # the card says where the deploy runs: the build's container is its sandbox
            plan.account = ", ".join(p for p in (plan.account, f"deploys on {runs_on.describe()}") if p)
        elif self.shared.unsandboxed:  # said on every card, not only in a log nobody reads during an incident
            plan.warnings.append(unsandboxed_warning(self.shared.unsandboxed))
        return plan

    def variables(self, stage: str) -> dict[str, VariableSource]:
        return self.settings.catalog.variables_for(stage, self.service)

    def _check_variables(self, plan: Plan) -> None:
        """Before anyone approves: every ${env:…} of the target has a source that can be read."""
        s = self.settings

        def aws() -> Mapping[str, str]:  # only when a parameter or secret must be looked up
            if not self.shared.uses_accounts:
                return s.child_env
            return self.accounts.env_for(plan.stage, session_name("rollback-bot-plan", self.service, plan.stage))

        source = self.source.for_dir(plan.service_dir) if plan.service_dir else self.source
        check_variables(source, plan.target.commit, plan.stage, plan.deploy_stage or plan.stage, self.service,
                        self.variables(plan.stage), s.host_env, s.child_env, aws, len(s.catalog.services) > 1)

    def _compose_dir_at(self, commit: str) -> str | None:
        """A Compose service's folder at ``commit`` (it may have moved since the bot started)."""
        entry = self.settings.catalog.services.get(self.service)
        if entry is None or not entry.compose:
            return None
        return self.settings.catalog.compose_path(self.source.file_at(commit, COMPOSE_FILE), self.service)


def unsandboxed_warning(why: str) -> str:
    return (f"{why[0].upper()}{why[1:]}: the target's install scripts and plugins run with the bot's own rights. "
            "Install bubblewrap (docs/security.md).")


class Shared:
    """What every service's engine shares: the store (one set of job ids and locks), the plugin
    cache, the AWS accounts of the stages, and one git mirror per repository."""

    def __init__(self, settings: Settings, mask: Masker, several: bool = False):
        self.settings = settings
        self.mask = mask
        self.several = several
        catalog = settings.catalog
        self.uses_accounts = bool(catalog.configured or any(a.role_arn or a.region for a in catalog.accounts.values()))
        self._lock = threading.Lock()
        self._cache: PluginCache | None = None
        self._mirrors: dict[str, SourceRepo] = {}

    @cached_property
    def store(self) -> Store:
        catalog = self.settings.catalog
        default = catalog.default_service or (catalog.names[0] if len(catalog.names) == 1 else "")
        return open_store(self.settings, self.mask, default or self.settings.service, self.several)

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.settings.catalog, self.settings.child_env, self.settings.step_timeout + 300)

    @cached_property
    def _sandbox(self) -> tuple[Sandbox | None, str]:
        # chosen once, when the first job runner is made: CI's read-only commands need no bubblewrap
        box, warning = choose(self.settings.sandbox, hidden_for(self.settings.data_dir))
        if warning:
            log.warning("%s", warning)
        return box, warning

    @property
    def sandbox(self) -> Sandbox | None:
        """Where jobs' commands run; raises SandboxUnavailable when ROLLBACK_SANDBOX=required cannot be met."""
        return self._sandbox[0]

    @property
    def unsandboxed(self) -> str:
        """Why jobs run without a sandbox ("" when they run in one)."""
        return self._sandbox[1]

    def plugin_cache(self, background: Callable[[Callable[[], None]], None]) -> PluginCache:
        with self._lock:
            if self._cache is None:
                s = self.settings
                self._cache = PluginCache(s.data_dir / "plugin-cache", background=background,
                                          max_bytes=s.plugin_cache_max,
                                          spares=s.app_concurrency if self.several else 1)
            return self._cache

    def source(self, settings: Settings) -> SourceRepo:
        """A view of the repository's mirror for one service's folder (one mirror per repository)."""
        with self._lock:
            mirror = self._mirrors.get(settings.repo)
            if mirror is None:
                mirror = SourceRepo(settings.repo, mirror_dir(settings, self.settings.repo), settings.service_dir)
                self._mirrors[settings.repo] = mirror
        return mirror.for_dir(settings.service_dir)


def mirror_dir(settings: Settings, main_repo: str):
    """ROLLBACK_REPO's mirror keeps its old place; other repositories get a folder named by their URL's hash."""
    if settings.repo == main_repo:
        return settings.data_dir / "mirror.git"
    return settings.data_dir / "mirrors" / (hashlib.sha256(settings.repo.encode()).hexdigest()[:16] + ".git")


def artifact_store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(make_s3_client(settings.s3_max_attempts, settings.child_env), settings.bucket,
                         settings.service, settings.prefix,
                         limits=Limits(max_total=settings.max_unpacked))


def open_store(settings: Settings, mask: Masker | None = None, default_service: str = "",
               several: bool = False) -> Store:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.data_dir, 0o700)  # a folder made before this: nobody else may even list it
    return Store(settings.data_dir / "rollback-bot.sqlite", mask=mask or Masker(settings.secrets()),
                 default_service=default_service or settings.service, several=several)


class Fleet:
    """Every service this bot serves, each with its own engine, sharing one store and its locks."""

    def __init__(self, settings: Settings, engines: dict[str, Engine], shared: Shared):
        self.settings = settings
        self.catalog: Catalog = settings.catalog
        self.engines = engines
        self.shared = shared

    @classmethod
    def of_one(cls, engine: Engine) -> Fleet:
        return cls(engine.settings, {engine.service: engine}, engine.shared)

    @property
    def names(self) -> list[str]:
        return list(self.engines)

    @property
    def several(self) -> bool:
        return len(self.engines) > 1

    def engine(self, service: str) -> Engine:
        if service in self.engines:
            return self.engines[service]
        self.catalog.service(service)  # raises, with the closest name
        raise KeyError(service)

    @property
    def store(self) -> Store:
        return self.shared.store

    @property
    def default(self) -> Engine:
        """ROLLBACK_SERVICE's engine, else the first: what is shared (the store) is the same in all."""
        return self.engines.get(self.catalog.default_service) or next(iter(self.engines.values()))

    def shutdown(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()


def build_fleet(settings: Settings) -> Fleet:
    settings = with_compose(settings)
    mask = Masker(settings.secrets())
    names = settings.catalog.names or [settings.service]
    shared = Shared(settings, mask, several=len(names) > 1)
    s3 = make_s3_client(settings.s3_max_attempts, settings.child_env)  # one client: the bot's own credentials
    engines = {}
    for name in names:
        own = settings.for_service(name) if settings.catalog.services else settings
        artifacts = ArtifactStore(s3, own.bucket, own.service, own.prefix, limits=Limits(max_total=own.max_unpacked))
        engines[name] = Engine(own, artifacts, shared.source(own), mask, shared)
    return Fleet(settings, engines, shared)


def with_compose(settings: Settings) -> Settings:
    """A bot with no [services] and no ROLLBACK_SERVICE serves what the repository's
    serverless-compose.yml names (read from its default branch at start-up)."""
    if settings.catalog.configured or settings.service or not settings.repo:
        return settings
    try:
        text = SourceRepo(settings.repo, mirror_dir(settings, settings.repo)).fetch_root(COMPOSE_FILE,
                                                                                        settings.repo_branch)
    except SourceError as exc:
        raise ConfigError([f"{COMPOSE_FILE} could not be read from ROLLBACK_REPO: {exc}"]) from None
    if text is None:
        raise ConfigError([f"ROLLBACK_SERVICE is not set, ROLLBACK_CONFIG has no [services], and {COMPOSE_FILE} "
                           "is not at the root of ROLLBACK_REPO: name the services one of these ways"])
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{COMPOSE_FILE} in ROLLBACK_REPO is not YAML: {str(exc)[:300]}"]) from None
    catalog, problems = settings.catalog.with_compose(doc if isinstance(doc, dict) else {})
    if problems:
        raise ConfigError(problems)
    log.info("services from %s: %s", COMPOSE_FILE, ", ".join(catalog.names))
    return replace(settings, catalog=catalog)


def build_engine(settings: Settings) -> Engine:
    """The engine of the one service a command names (ROLLBACK_SERVICE, or the only one)."""
    fleet = build_fleet(settings)
    return fleet.engine(settings.catalog.resolve(settings.service or None)) if settings.catalog.services \
        else fleet.default
