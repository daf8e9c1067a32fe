"""clickhouse-connect's HTTP client against the chdb-backed HTTP emulator."""

import gzip
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from datetime import date, datetime, timezone
from decimal import Decimal
from urllib.parse import quote

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from tests.support.clickhouse_http import start, stop

EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.events (
    id UUID,
    day Date,
    ts DateTime64(3, 'UTC'),
    path String,
    tags Array(String),
    attrs Map(String, String),
    kind LowCardinality(String),
    amount Decimal(18, 4),
    note Nullable(String)
) ENGINE = MergeTree
ORDER BY (day, id)
TTL day + INTERVAL 1 YEAR
SETTINGS non_replicated_deduplication_window = 1000
"""
COLUMNS = ["id", "day", "ts", "path", "tags", "attrs", "kind", "amount", "note"]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    url, proc = start(str(tmp_path_factory.mktemp("chdb-http")))
    yield url
    stop(proc)


@pytest.fixture
def client(server_url):
    client = clickhouse_connect.get_client(dsn=server_url)
    yield client
    client.close()


@pytest.fixture
def db(client):
    name = f"t_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE IF NOT EXISTS {name}")
    client.command(EVENTS_DDL.format(db=name))
    return name


def event_row(path, note=None):
    return [
        uuid.uuid4(),
        date.today(),
        datetime.now(timezone.utc).replace(microsecond=123000),
        path,
        ["a", "b'c"],
        {"k": "v", "quote": "it's"},
        "view",
        Decimal("12.3456"),
        note,
    ]


def http(url, data=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as ex:
        return ex.code, ex.read(), ex.headers


def test_ping_and_root(server_url, client):
    assert client.ping()
    assert http(server_url + "/ping")[:2] == (200, b"Ok.\n")
    assert http(server_url + "/")[:2] == (200, b"Ok.\n")
    status, body, headers = http(server_url + "/?query=" + quote("SELECT 1 + 1"))
    assert (status, body) == (200, b"2\n")
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"]
    assert headers["X-ClickHouse-Query-Id"]


def test_query_param_and_body_are_concatenated(server_url):
    status, body, _ = http(server_url + "/?query=" + quote("SELECT 1 AS x"), b"FORMAT CSVWithNames")
    assert (status, body) == (200, b'"x"\n1\n')


def test_get_is_readonly(server_url):
    status, body, headers = http(server_url + "/?query=" + quote("CREATE TABLE ro (a UInt8) ENGINE = Memory"))
    assert status == 500
    assert headers["X-ClickHouse-Exception-Code"] == "164"
    assert b"READONLY" in body


def test_server_info(client):
    assert client.server_version
    assert client.command("SELECT version(), timezone()")[0] == client.server_version


def test_round_trip_types_with_bound_parameters(client, db):
    rows = [event_row("/home"), event_row("x'; DROP TABLE events; --", note="n")]
    summary = client.insert("events", rows, column_names=COLUMNS, database=db)
    assert summary.written_rows == 2

    result = client.query(
        f"SELECT {', '.join(COLUMNS)} FROM {db}.events WHERE path = {{p:String}}",
        parameters={"p": "x'; DROP TABLE events; --"},
    )
    assert result.column_names == tuple(COLUMNS)
    (got,) = result.result_rows
    want = rows[1]
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2].replace(tzinfo=timezone.utc) == want[2]
    assert list(got[3:]) == want[3:]
    assert client.command(f"SELECT count() FROM {db}.events") == 2


def test_insert_deduplication_token(client, db):
    rows = [event_row("/dedupe")]
    for _ in range(2):
        client.insert("events", rows, column_names=COLUMNS, database=db,
                      settings={"insert_deduplication_token": "tok"})
    assert client.command(f"SELECT count() FROM {db}.events") == 1
    client.insert("events", rows, column_names=COLUMNS, database=db,
                  settings={"insert_deduplication_token": "other"})
    assert client.command(f"SELECT count() FROM {db}.events") == 2


def test_settings_apply_to_one_request_only(client, db):
    setting = "SELECT getSetting('max_result_rows')"
    assert client.command(setting, settings={"max_result_rows": 7}) == 7
    assert client.command(setting) == 0
    with pytest.raises(DatabaseError, match="READONLY"):
        client.command(f"DROP TABLE {db}.events", settings={"readonly": 1})
    assert client.command(f"EXISTS TABLE {db}.events") == 1


def test_database_selects_default_database(server_url, db):
    client = clickhouse_connect.get_client(dsn=server_url, database=db)
    client.insert("events", [event_row("/db")], column_names=COLUMNS)
    assert client.query("SELECT path FROM events").result_rows == [("/db",)]
    client.close()


def test_errors_raise_database_error(client):
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE") as err:
        client.query("SELECT * FROM no_such_table")
    assert "Code: 60" in str(err.value)
    with pytest.raises(DatabaseError, match="SYNTAX_ERROR"):
        client.command("SELEC 1")
    with pytest.raises(DatabaseError, match="UNKNOWN_SETTING"):
        client.query("SELECT 1", settings={"no_such_setting": 1})
    assert client.command("SELECT 1") == 1  # the server survives errors


def test_command_results(client, db):
    assert client.command("SELECT 1 WHERE 0") == ""
    assert client.command("SELECT 'a', 2") == ["a", "2"]
    assert client.command(f"CREATE TABLE IF NOT EXISTS {db}.m (a UInt8) ENGINE = Memory").written_rows == 0


def test_empty_and_limit_zero_queries(client, db):
    assert client.query(f"SELECT path, amount FROM {db}.events LIMIT 0").column_names == ("path", "amount")
    assert client.query(f"SELECT path FROM {db}.events WHERE 0").result_rows == []


# compress="deflate" is accepted by get_client but clickhouse-connect 1.12 has no
# deflate insert compressor (KeyError in get_compressor); raw_insert covers deflate.
@pytest.mark.parametrize("compress", [True, False, "lz4", "zstd", "gzip"])
def test_compressed_inserts(server_url, db, compress):
    client = clickhouse_connect.get_client(dsn=server_url, compress=compress)
    client.command(f"CREATE TABLE {db}.nums (n UInt64) ENGINE = MergeTree ORDER BY n")
    count = 600_000  # more than one insert block, so several compressed frames
    client.insert(f"{db}.nums", [[n] for n in range(count)], column_names=["n"])
    assert client.query(f"SELECT count(), sum(n) FROM {db}.nums").result_rows == [(count, count * (count - 1) // 2)]
    client.close()


def test_raw_insert_and_raw_query(client, db):
    client.command(f"CREATE TABLE {db}.csv (a UInt8, b String) ENGINE = Memory")
    client.raw_insert(f"{db}.csv", ["a", "b"], "1,x\n2,y\n", fmt="CSV")
    client.raw_insert(f"{db}.csv", ["a", "b"], gzip.compress(b"3,z\n"), fmt="CSV", compression="gzip")
    client.raw_insert(f"{db}.csv", ["a", "b"], zlib.compress(b"4,w\n"), fmt="CSV", compression="deflate")
    body = client.raw_query(f"SELECT a, b FROM {db}.csv ORDER BY a", fmt="JSONEachRow")
    assert body.splitlines() == [
        b'{"a":1,"b":"x"}', b'{"a":2,"b":"y"}', b'{"a":3,"b":"z"}', b'{"a":4,"b":"w"}']


def test_large_parameters_use_form_encoding(server_url):
    big = "x" * 20_000
    for form in (False, True):
        client = clickhouse_connect.get_client(dsn=server_url, form_encode_query_params=form)
        assert client.query("SELECT length({p:String})", parameters={"p": big}).result_rows == [(20_000,)]
        assert client.query("SELECT {p:String}", parameters={"p": "a\r\nb"}).result_rows == [("a\r\nb",)]
        client.close()


def test_without_session_ids(server_url, db):
    client = clickhouse_connect.get_client(dsn=server_url, autogenerate_session_id=False)
    client.insert("events", [event_row("/nosession")], column_names=COLUMNS, database=db)
    assert client.query(f"SELECT path FROM {db}.events").result_rows == [("/nosession",)]
    client.close()


def test_concurrent_clients(server_url, db):
    errors = []

    def work(n):
        try:
            client = clickhouse_connect.get_client(dsn=server_url)
            for i in range(10):
                client.insert("events", [event_row(f"/t{n}")], column_names=COLUMNS, database=db)
                got = client.query(f"SELECT count() FROM {db}.events WHERE path = {{p:String}}", parameters={"p": f"/t{n}"})
                assert got.result_rows == [(i + 1,)]
            client.close()
        except Exception as ex:  # surfaced by the main thread
            errors.append(ex)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert client_count(server_url, db) == 40


def client_count(server_url, db):
    client = clickhouse_connect.get_client(dsn=server_url)
    try:
        return client.command(f"SELECT count() FROM {db}.events")
    finally:
        client.close()
