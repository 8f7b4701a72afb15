"""Settings for commands that run on the server's machine (serve, db, keys bootstrap)."""

from __future__ import annotations

import ipaddress
from typing import Any


def settings_from(**overrides: Any) -> Any:
    from modelworks.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def is_loopback(host: str) -> bool:

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
