"""What the target's plugins will do during the deploy, on the plan before anyone approves: the real planner
on a real repository (fast tier), and the card and the terminal's plan as people read them."""

from __future__ import annotations

import json

import git

from bot.slack import blocks as kit
from bot.terminal.render import render_plan
from tests.support.fast_service import fast_package, handler
from tests.support.gitrepo import ServiceRepo

YML = """service: hello-service
provider:
  name: aws
  runtime: nodejs20.x
plugins:
  - serverless-domain-manager
  - serverless-prune-plugin
  - serverless-plugin-aws-alerts
custom:
  customDomain:
    domainName: api.example.com
  prune:
    automatic: true
    number: 3
  alerts:
    externalStack: true
    topics:
      alarm: !Ref AlarmTopic
functions:
  hello:
    handler: handler.hello
"""


def test_the_plan_says_what_the_targets_plugins_will_do_and_what_they_break(aws_env, s3, tmp_path):
    from tests.conftest import engine_factory

    work = ServiceRepo(tmp_path / "svc" / "work")
    commits = {"v1": work.commit("Hello v1", {"serverless.yml": YML, "handler.js": handler("v1")})}
    commits["v2"] = work.commit("Make hello say v2", {"handler.js": handler("v2")})
    origin = tmp_path / "svc" / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    make, engines = engine_factory(aws_env, tmp_path, origin)
    engine = make()
    try:
        for name in commits:
            engine.artifacts.publish("prod", commits[name], fast_package(tmp_path / f"pkg-{name}", name),
                                     build_id=f"b-{name}")
        engine.artifacts.mark_deployed("prod", commits["v2"], "b-v2", by="ci")
        plan = engine.plan("prod", "b-v1")
    finally:
        for e in engines:
            e.jobs.shutdown()
    assert plan.dangers == ["serverless-plugin-aws-alerts with `externalStack` DELETES the external alerts stack "
                            "when deployed with --package (its compile step is skipped, so it sees no alarms): "
                            "after this rollback the service has no alarms until CI deploys it again."]
    assert ("serverless-domain-manager will update the base path mapping of `api.example.com` during the deploy."
            in plan.warnings)
    assert "serverless-prune-plugin will delete old Lambda versions (keeping 3) after the deploy." in plan.warnings
    card = json.dumps(kit.plan_blocks(plan, 1, "U-ANA", 0.0, 0.0), ensure_ascii=False)
    assert "🛑 *serverless-plugin-aws-alerts with ˋexternalStackˋ DELETES" in card  # escaped, bold
    assert card.index("🛑") < card.index("serverless-domain-manager will update")  # the harm comes first
    printed = render_plan(plan, 0.0)
    assert "DANGER: serverless-plugin-aws-alerts" in printed


def test_a_hostile_domain_name_in_serverless_yml_is_escaped_on_the_card_and_cleaned_at_the_terminal():
    from bot.core.plugin_effects import plugin_effects
    from bot.core.stage_index import Artifact
    from bot.engine import Plan

    acts, _ = plugin_effects({"custom": {"customDomain": {"domainName": "<!channel> ping \x1b[31mred"}}},
                             ("serverless-domain-manager",))
    plan = Plan(stage="prod", ref="b-v1", target=Artifact("a" * 40, "b-v1", "k", "0" * 64, 1, 0.0), live=None,
                warnings=acts)
    card = json.dumps(kit.plan_blocks(plan, 1, "U-ANA", 0.0, 0.0), ensure_ascii=False)
    assert "<!channel>" not in card and "&lt;!channel&gt;" in card  # no ping for the whole channel
    assert "\x1b" not in render_plan(plan, 0.0)
