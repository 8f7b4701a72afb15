"""Every setting is documented in the README's table, with the default the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from modelworks.settings import Settings, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_rows() -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| `(MODELWORKS_[A-Z_]+)` \| ([^|]+?) \| (.*?) \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows


def test_readme_table_matches_settings() -> None:
    documented = _readme_rows()
    declared = {name: (t, d, h) for name, t, d, h in settings_table()}
    assert set(documented) == set(declared), "README settings table and Settings differ"
    for name, (type_name, default, help_text) in declared.items():
        doc_type, doc_default, doc_help = documented[name]
        assert doc_type == type_name, name
        assert doc_default == (f"`{default}`" if default else "(empty)"), name
        assert doc_help == help_text, name


def test_env_vars_are_read_with_prefix(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MODELWORKS_HOME", str(tmp_path))
    monkeypatch.setenv("MODELWORKS_PORT", "9123")
    monkeypatch.setenv("MODELWORKS_AUTH", "false")
    s = Settings()
    assert s.home == tmp_path
    assert s.port == 9123
    assert s.auth is False
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'modelworks.db'}"
    assert s.resolved_store_url == str(tmp_path / "artifacts")


def test_home_expands_user(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MODELWORKS_HOME", raising=False)
    assert Settings().home == tmp_path / ".modelworks"
