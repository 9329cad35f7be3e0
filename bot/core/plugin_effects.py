"""What the target's Serverless plugins will do during a rollback's deploy, said on the plan before anyone
approves: the ones that change more than the stack (a domain's base path mapping, old Lambda versions),
and the one known to do harm when deployed with ``--package``."""

from __future__ import annotations

from collections.abc import Mapping


def _text(value: object) -> str:
    return value if isinstance(value, str) and len(value) <= 253 else ""


def plugin_effects(config: Mapping, plugins: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(what will act, what will do harm) for a parsed serverless.yml and its plugin list."""
    custom = config.get("custom") if isinstance(config.get("custom"), Mapping) else {}
    acts: list[str] = []
    harm: list[str] = []
    if "serverless-domain-manager" in plugins:
        domains = custom.get("customDomain") or custom.get("customDomains") or {}
        items = domains if isinstance(domains, list) else [domains]
        names = [_text(d.get("domainName")) for d in items if isinstance(d, Mapping)]
        shown = ", ".join(f"`{n}`" for n in names if n) or "its custom domain"
        acts.append(f"serverless-domain-manager will update the base path mapping of {shown} during the deploy.")
    if "serverless-prune-plugin" in plugins:
        prune = custom.get("prune") if isinstance(custom.get("prune"), Mapping) else {}
        if prune.get("automatic"):
            keep = prune.get("number")
            acts.append("serverless-prune-plugin will delete old Lambda versions"
                        + (f" (keeping {keep})" if isinstance(keep, int) else "") + " after the deploy.")
    if "serverless-plugin-aws-alerts" in plugins:
        alerts = custom.get("alerts") if isinstance(custom.get("alerts"), Mapping) else {}
        if alerts.get("externalStack"):
            harm.append("serverless-plugin-aws-alerts with `externalStack` DELETES the external alerts stack when "
                        "deployed with --package (its compile step is skipped, so it sees no alarms): after this "
                        "rollback the service has no alarms until CI deploys it again.")
    return acts, harm
