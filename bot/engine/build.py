"""Assemble the rollback engine's services from validated settings (for the CLI and the Slack app)."""

from __future__ import annotations

from functools import cached_property

from bot.adapters.archive import Limits
from bot.adapters.artifacts import ArtifactStore, make_s3_client
from bot.adapters.source import SourceRepo
from bot.adapters.stack import Stack
from bot.adapters.store import Store
from bot.core.config import Settings
from bot.core.masking import Masker
from bot.engine.planner import Plan, make_plan
from bot.engine.runner import EngineConfig, JobRunner


class Engine:
    """The engine's parts for one deployment. The sqlite store and the job runner are made on first
    use, so CI's read-only commands (check-freeze, list, show) never touch the local data dir."""

    def __init__(self, settings: Settings, artifacts: ArtifactStore, source: SourceRepo, mask: Masker):
        self.settings = settings
        self.artifacts = artifacts
        self.source = source
        self.mask = mask

    @cached_property
    def store(self) -> Store:
        return open_store(self.settings, self.mask)

    @cached_property
    def jobs(self) -> JobRunner:
        s = self.settings
        config = EngineConfig(
            data_dir=s.data_dir, env=s.child_env, step_timeout=float(s.step_timeout),
            deploy_template=s.deploy_command, install_template=s.install_command, plugin_cache_max=s.plugin_cache_max,
        )
        return JobRunner(config, self.store, self.artifacts, self.source, self.mask, stack_factory=self.stack)

    def stack(self, name: str, region: str) -> Stack:
        """A CloudFormation stack reached with the settings' AWS credentials and endpoint."""
        return Stack(name, region, self.settings.child_env)

    def shutdown(self) -> None:
        if "jobs" in self.__dict__:
            self.jobs.shutdown()

    def plan(self, stage: str, ref: str, build_id: str | None = None) -> Plan:
        return make_plan(self.artifacts, self.source, stage, ref, self.stack, build_id)


def artifact_store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(make_s3_client(settings.s3_max_attempts, settings.child_env), settings.bucket,
                         settings.service, settings.prefix,
                         limits=Limits(max_total=settings.max_unpacked))


def open_store(settings: Settings, mask: Masker | None = None) -> Store:
    return Store(settings.data_dir / "rollback-bot.sqlite", mask=mask or Masker(settings.secrets()))


def build_engine(settings: Settings) -> Engine:
    source = SourceRepo(settings.repo, settings.data_dir / "mirror.git", settings.service_dir)
    return Engine(settings, artifact_store(settings), source, Masker(settings.secrets()))
