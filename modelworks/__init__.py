"""Modelworks: a self-hosted Model-as-a-Service platform."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]

if TYPE_CHECKING:
    from modelworks.client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    # the SDK is imported lazily so `import modelworks` stays light for the server
    if name in ("Client", "AsyncClient"):
        from modelworks import client

        return getattr(client, name)
    raise AttributeError(name)
