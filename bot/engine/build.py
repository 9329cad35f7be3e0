"""Assemble the rollback engine's services from validated settings (for the CLI and the Slack app)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.adapters.archive import Limits
from bot.adapters.artifacts import ArtifactStore, make_s3_client
from bot.adapters.source import SourceRepo
from bot.adapters.store import Store
from bot.core.config import Settings
from bot.core.masking import Masker
from bot.engine.planner import Plan, make_plan
from bot.engine.runner import EngineConfig, JobRunner


@dataclass
class Engine:
    settings: Settings
    artifacts: ArtifactStore
    store: Store
    source: SourceRepo
    jobs: JobRunner
    mask: Masker

    def plan(self, stage: str, ref: str, build_id: str | None = None) -> Plan:
        return make_plan(self.artifacts, self.source, stage, ref, self.jobs.stack_factory, build_id)


def artifact_store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(make_s3_client(settings.s3_max_attempts), settings.bucket, settings.service, settings.prefix,
                         limits=Limits(max_total=settings.max_unpacked))


def open_store(settings: Settings, mask: Masker | None = None) -> Store:
    return Store(settings.data_dir / "rollback-bot.sqlite", mask=mask or Masker(settings.secrets()))


def build_engine(settings: Settings) -> Engine:
    data = settings.data_dir
    artifacts = artifact_store(settings)
    mask = Masker(settings.secrets())
    store = open_store(settings, mask)
    source = SourceRepo(settings.repo, data / "mirror.git", settings.service_dir)
    config = EngineConfig(
        data_dir=data, env=settings.child_env, step_timeout=float(settings.step_timeout),
        deploy_template=settings.deploy_command, install_template=settings.install_command,
        plugin_cache_max=settings.plugin_cache_max,
    )
    return Engine(settings, artifacts, store, source, JobRunner(config, store, artifacts, source, mask), mask)
