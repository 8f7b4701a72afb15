"""Models, versions and aliases: the registry service. Every query is scoped by project."""

from modelworks.registry.service import Registry, parse_model_ref

__all__ = ["Registry", "parse_model_ref"]
