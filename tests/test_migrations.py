"""Migrations build exactly the tables the code declares, on SQLite and PostgreSQL, and go
back down cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from modelworks.db import current_revision, downgrade, make_engine, upgrade
from modelworks.db.tables import Base
from modelworks.settings import Settings


def test_migrations_match_the_tables(settings: Settings, database_url: str) -> None:
    url = settings.resolved_database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], diff


def test_downgrade_and_upgrade_again(settings: Settings, database_url: str) -> None:
    url = settings.resolved_database_url
    head = current_revision(url)
    downgrade(url, "0001")
    assert current_revision(url) == "0001"
    upgrade(url)
    assert current_revision(url) == head


def test_migrations_keep_the_data(services, client, tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    from tests.models import linear_onnx

    client.create_model("kept")
    client.push("kept", linear_onnx(tmp_path / "m.onnx"))
    key = client.create_key(role="invoker")
    url = services.settings.resolved_database_url
    downgrade(url, "0003")
    upgrade(url)
    assert client.get_model("kept")["latest_version"] == 1
    assert key["id"] in [k["id"] for k in client.list_keys()]


def test_versions_left_converting_get_an_export_job(
    services, client, tmp_path, database_url
) -> None:  # type: ignore[no-untyped-def]
    """The old server resumed interrupted exports by scanning versions; 0006 queues them."""
    from tests.models import linear_onnx

    client.create_model("half", task="embeddings")
    client.push("half", linear_onnx(tmp_path / "m.onnx"))
    url = services.settings.resolved_database_url
    downgrade(url, "0005")
    with services.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE model_versions SET status = 'converting'")
    upgrade(url)
    (job,) = services.jobs.list_jobs(services.default_project_id)
    assert (job.kind, job.status) == ("export", "queued")
    assert (job.params["model"], job.params["version"]) == ("half", 1)
