"""A small emulator of the ClickHouse HTTP interface, backed by the chdb engine.

Lets tests drive clickhouse-connect's real HTTP client (``get_client(dsn=url)``)
without a ClickHouse server. It runs in its own process because chdb hosts one
engine (one data dir) per process:

    python -m tests.support.clickhouse_http --port 0 --path DIR
    -> prints ``LISTENING http://127.0.0.1:PORT`` once ready

Supported: GET/POST ``/`` with the SQL in the ``query`` URL param, a newline,
then the body (as ClickHouse joins them); ``/ping`` and an empty query answer
``Ok.``; multipart/form-data ``query``/``param_*`` fields (clickhouse-connect's
form encoding); ``INSERT ... [SETTINGS ...] FORMAT X`` with the data in the
body; ``param_<name>`` query parameters, ``database``, ``default_format``; all
other URL params are ClickHouse settings for that request only (GET adds
``readonly=2`` like ClickHouse); request bodies chunked and/or compressed with
lz4, zstd, gzip, deflate (br if brotli is installed); the headers
clickhouse-connect reads (X-ClickHouse-Summary/-Query-Id/-Timezone/-Format/
-Exception-Code) and ClickHouse's error text and main HTTP status codes.

Not supported: sessions (each request gets a fresh chdb connection, so SET, USE
and temporary tables end with the request; session_id is ignored), auth
(user/password are ignored), external data tables, ``decompress=1``,
compressed responses (sent plain; clickhouse-connect accepts that), progress
headers, streaming (results are buffered), ``client_protocol_version`` (the
client's probe then falls back to protocol 0). Queries run one at a time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.frame

try:  # zstd comes with clickhouse-connect: stdlib on 3.14+, backports.zstd before
    from compression import zstd
except ImportError:
    from backports import zstd

# chdb's engine must not be called concurrently, so every call takes this lock.
ENGINE_LOCK = threading.Lock()

# URL params the HTTP layer consumes itself; they are not engine settings.
TRANSPORT_PARAMS = {
    "query", "database", "default_format", "user", "password", "quota_key", "role", "session_id",
    "session_timeout", "session_check", "close_session", "query_id", "compress", "decompress",
    "enable_http_compression", "wait_end_of_query", "buffer_size", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "client_protocol_version", "stacktrace",
}
# The main cases of ClickHouse's exceptionCodeToHTTPStatus, by error name; the rest is 500.
HTTP_STATUS = {
    400: {"BAD_ARGUMENTS", "SYNTAX_ERROR", "TYPE_MISMATCH", "INCORRECT_DATA", "CANNOT_PARSE_TEXT",
          "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_UUID",
          "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "ILLEGAL_COLUMN", "THERE_IS_NO_COLUMN"},
    404: {"UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
          "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_FORMAT", "UNKNOWN_AGGREGATE_FUNCTION"},
    501: {"NOT_IMPLEMENTED"},
}
# INSERT INTO t [(cols)] [SETTINGS ...] FORMAT X; ClickHouse then skips blanks and
# one line break before the data (binary data may itself start with \n).
NAME = rb'(?:`[^`]*`|"[^"]*"|[\w.])+'
INSERT_RE = re.compile(
    rb"\s*(INSERT\s+INTO\s+(?:TABLE\s+)?" + NAME + rb"\s*(?:\([^)]*\))?)\s*(SETTINGS\s.*?)?"
    rb"\s*FORMAT\s+(\w+)[ \t\f]*\r?\n?", re.IGNORECASE | re.DOTALL)
TRAILING_FORMAT_RE = re.compile(rb"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTENT_TYPES = {"Native": "application/octet-stream", "RowBinary": "application/octet-stream",
                 "JSON": "application/json; charset=UTF-8", "TabSeparated": "text/tab-separated-values; charset=UTF-8"}


class ClickHouseError(Exception):
    def __init__(self, code: int, message: str, name: str):
        super().__init__(f"Code: {code}. DB::Exception: {message}. ({name})")


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def decompress(data: bytes, encoding: str) -> bytes:
    if encoding == "lz4":  # clickhouse-connect sends one lz4 frame per insert block
        out = []
        while data:
            frame = lz4.frame.LZ4FrameDecompressor()
            out.append(frame.decompress(data))
            data = frame.unused_data
        return b"".join(out)
    if encoding == "br":
        import brotli  # optional, as in clickhouse-connect
        return brotli.decompress(data)
    codecs = {"": bytes, "identity": bytes, "gzip": gzip.decompress, "deflate": zlib.decompress, "zstd": zstd.decompress}
    if encoding not in codecs:
        raise ClickHouseError(48, f"Unsupported Content-Encoding {encoding}", "NOT_IMPLEMENTED")
    return codecs[encoding](data)


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields = {}
    for part in msg.iter_parts():
        if part.get_filename():
            raise ClickHouseError(48, "External data is not supported by this emulator", "NOT_IMPLEMENTED")
        fields[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True).decode()
    return fields


def run(path: str, sql: bytes, params: dict[str, str], method: str) -> tuple[bytes, str | None, dict]:
    """Run one request's SQL; returns (body, X-ClickHouse-Format or None, summary)."""
    settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
    if method == "GET":
        settings.setdefault("readonly", "2")  # ClickHouse allows only reads over GET
    # ClickHouse applies URL settings as one batch: readonly goes last so it
    # does not reject the settings after it.
    names = sorted(settings, key=lambda k: k == "readonly")
    for name in names:
        if not SETTING_NAME_RE.match(name):
            raise ClickHouseError(115, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
    query_params = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
    insert = INSERT_RE.match(sql)
    infile = None
    if insert:  # chdb reads INSERT data from a file, as clickhouse-connect's chdb backend does
        with tempfile.NamedTemporaryFile(suffix=".data", delete=False) as tmp:
            tmp.write(sql[insert.end():])
        infile = tmp.name
        head, clause, fmt = (g.decode() if g else "" for g in insert.groups())
        sql = f"{head} FROM INFILE {quote(infile)} {clause} FORMAT {fmt}".encode()
    explicit = TRAILING_FORMAT_RE.search(sql)
    fmt = explicit.group(1).decode() if explicit else params.get("default_format") or "TabSeparated"
    # As in clickhouse-connect's chdb backend: with names, a statement with a result
    # set always emits a line, so an empty body means no result (no Format header).
    probe = not insert and not explicit and fmt in ("TabSeparated", "TSV")
    try:
        with ENGINE_LOCK:
            conn = chdb.connect(path)  # a fresh handle, so SET and USE last one request
            try:
                if params.get("database"):
                    conn.query(f"USE `{params['database'].replace('`', '``')}`", "TabSeparated")
                for name in names:
                    conn.query(f"SET {name} = {quote(settings[name])}", "TabSeparated")
                result = conn.query(sql, "TabSeparatedWithNames" if probe else fmt, params=query_params)
                body = result.bytes() or b""
                summary = {
                    "read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                    "written_rows": str(result.rows_written()), "written_bytes": str(result.bytes_written()),
                    "total_rows_to_read": "0", "elapsed_ns": str(int(result.elapsed() * 1e9)),
                }
            finally:
                conn.close()
    finally:
        if infile:
            os.unlink(infile)
    has_result = not insert and (bool(explicit) or bool(body))
    if probe:
        body = body[body.find(b"\n") + 1:]  # drop the names line
    return body, fmt if has_result else None, summary


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which urllib3's pool expects

    def log_message(self, *args):  # quiet: nobody reads the server's stderr
        pass

    def read_body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []  # http.server leaves chunked bodies (urllib3 sends generators so) to us
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers
            pass
        return b"".join(chunks)

    def reply(self, status: int, body: bytes, headers: dict[str, str]):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        headers = {"X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
                   "X-ClickHouse-Server-Display-Name": "chdb-http",
                   "X-ClickHouse-Timezone": params.get("session_timezone") or self.server.timezone}
        ok = {"Content-Type": "text/html; charset=UTF-8"}
        try:
            body = self.read_body()
            if url.path.rstrip("/") == "/ping":
                return self.reply(200, b"Ok.\n", ok)
            if url.path.rstrip("/"):
                return self.reply(404, f"There is no handle {url.path}\n".encode(), ok)
            if params.get("decompress", "0") not in ("", "0"):
                raise ClickHouseError(48, "decompress=1 is not supported by this emulator", "NOT_IMPLEMENTED")
            body = decompress(body, self.headers.get("Content-Encoding", "").lower())
            if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                params.update(form_fields(self.headers["Content-Type"], body))
                body = b""
            sql = (params["query"].encode() + b"\n" if params.get("query") else b"") + body
            if not sql.strip():
                return self.reply(200, b"Ok.\n", ok)
            data, fmt, summary = run(self.server.data_path, sql, params, self.command)
        except Exception as ex:  # chdb raises ChdbError carrying ClickHouse's exception text
            text = str(ex)
            text = text[text.find("Code: "):] if "Code: " in text else f"Code: 1001. DB::Exception: {text}. (STD_EXCEPTION)"
            name = re.search(r"\((\w+)\)\s*$", text)
            status = next((s for s, names in HTTP_STATUS.items() if name and name.group(1) in names), 500)
            headers["X-ClickHouse-Exception-Code"] = re.match(r"Code: (\d+)", text).group(1)
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            return self.reply(status, f"{text.strip()} (version {self.server.version})\n".encode(), headers)
        headers["X-ClickHouse-Summary"] = json.dumps(summary)
        if fmt:
            headers["X-ClickHouse-Format"] = fmt
        headers["Content-Type"] = CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8")  # clickhouse-connect ignores it
        self.reply(200, data, headers)

    do_GET = do_POST  # run() tells them apart by self.command


def serve(path: str, port: int) -> None:
    os.makedirs(path, exist_ok=True)
    # A handle held for the server's life keeps the engine up, so per-request
    # handles cost ~1 ms instead of an engine start each.
    anchor = chdb.connect(path)
    version, timezone = anchor.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.data_path, server.version, server.timezone = path, version, timezone
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"LISTENING http://127.0.0.1:{server.server_address[1]}", flush=True)
    os.dup2(2, 1)  # nobody reads the stdout pipe after this line; stray output goes to stderr
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with ENGINE_LOCK:
            anchor.close()


def start(path: str, timeout: float = 30.0, port: int = 0) -> tuple[str, subprocess.Popen]:
    """Launch the server in a subprocess, on `port` or a free one; returns (url, process)."""
    log = tempfile.TemporaryFile()  # a file, not a pipe: an unread pipe can block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.clickhouse_http", "--port", str(port), "--path", path],
        cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    proc.log = log
    deadline, line = time.monotonic() + timeout, b""
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            break
    if not line.startswith(b"LISTENING "):
        log.seek(0)
        stderr = log.read().decode(errors="replace")
        stop(proc)
        raise RuntimeError(f"clickhouse_http server did not start (stdout {line!r}):\n{stderr}")
    return line.split()[1].decode(), proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
    proc.log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", required=True)
    args = parser.parse_args()
    serve(args.path, args.port)
