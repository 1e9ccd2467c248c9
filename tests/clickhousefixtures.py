"""ClickHouse test fixtures (a pytest plugin): a real two-shard cluster per session and
a fresh database per test on every server of it.

The servers are started by the tests themselves (see clickhouse_cluster.py): under
CI=true a missing clickhouse-server fails the test, elsewhere it is skipped.
"""

import uuid

import pytest

from clickhouse_cluster import ClickHouseCluster, find_server
from conftest import missing


@pytest.fixture(scope="session")
def clickhouse_cluster(tmp_path_factory):
    """Two servers, cluster ``siptrace`` (one shard each), for the whole session."""
    if find_server() is None:
        missing("clickhouse-server is not installed")
    cluster = ClickHouseCluster(tmp_path_factory.mktemp("clickhouse"), size=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def clickhouse_db(clickhouse_cluster):
    """A fresh database ``t_<hex>`` on every server; dropped on every server after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    for server in clickhouse_cluster.servers:  # a test may have left one stopped
        if not server.running:
            server.start()
    clickhouse_cluster.create_database(name)
    yield name
    for server in clickhouse_cluster.servers:
        if not server.running:
            server.start()
    clickhouse_cluster.drop_database(name)
