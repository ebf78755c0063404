"""HTTP edges: the request head limit over a real socket, and the exact problem bodies of the
edges of the contract (malformed JSON, a missing content type, customer ids as digit strings, the
batch cost cap, the index version on index answers) and of the OpenAPI document that states them.

The head limit runs against a real ``python -m similarity_api serve`` (test_server.running_server)
on a tiny artifact, with raw sockets so that the test decides how the bytes are split into writes;
everything else runs in process on the same tiny artifact.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from similarity_api import schemas
from similarity_api.app import create_app
from similarity_api.build.pipeline import BuildResult, build

from .artifact_damage import ZERO_SECONDS, tiny_dataset
from .conftest import app_client, build_settings, serve_settings
from .test_server import Server, running_server

PROBLEM = "application/problem+json"
JSON = {"content-type": "application/json"}
LIMIT = 16 * 1024  # SIMILARITY_MAX_HEADER_BYTES, set explicitly for the server below
HEAD_TOO_LARGE = {
    "type": "/problems/headers-too-large",
    "title": "Request Header Fields Too Large",
    "status": 431,
    "detail": f"the request line and headers are larger than {LIMIT} bytes",
    "limit_bytes": LIMIT,
}
HEALTHY = {"status": "ok"}
SOCKET_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    root = tmp_path_factory.mktemp("http-edges")
    return build(build_settings(tiny_dataset(root / "data"), root / "artifacts", recall_sample=0))


# --- the request head limit, over a real socket ----------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny: BuildResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("http-edges-server") / "server.log"
    env = {"SIMILARITY_MAX_HEADER_BYTES": str(LIMIT)}
    with running_server(tiny.path.parent, log, env=env) as running:
        yield running


def head(size: int, *, path: str = "/healthz", close: bool = True) -> bytes:
    """A GET head of exactly ``size`` bytes: request line, headers and the empty line."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\n" + ("Connection: close\r\n" if close else "")
    padding = size - len(start) - len("X-Pad: \r\n\r\n")
    assert padding >= 0
    made = f"{start}X-Pad: {'a' * padding}\r\n\r\n".encode("ascii")
    assert len(made) == size
    return made


def post(body: bytes, *, chunked: bool = False) -> bytes:
    """POST /predict with ``body``, framed by Content-Length or as one chunk."""
    start = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if chunked:
        return start + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(body),
            body,
        )
    return start + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def exchange(server: Server, writes: list[bytes], pause: float = 0.02) -> bytes:
    """Send ``writes`` one write each (TCP_NODELAY, a pause between them) on a fresh connection,
    then read until the server closes it. A write the server no longer reads may fail: fine."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for number, data in enumerate(writes):
                if number:
                    time.sleep(pause)
                sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def responses(raw: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """The responses in ``raw``, in order: (status, headers, JSON body)."""
    out = []
    while raw:
        top, blank, rest = raw.partition(b"\r\n\r\n")
        assert blank, raw[:300]
        status_line, *lines = top.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers["content-length"])
        out.append((int(status_line.split()[1]), headers, json.loads(rest[:length])))
        raw = rest[length:]
    return out


def quarters(data: bytes) -> list[bytes]:
    q = len(data) // 4
    return [data[:q], data[q : 2 * q], data[2 * q : 3 * q], data[3 * q :]]


SPLITS = {
    "one write": lambda data: [data],
    "4 writes": quarters,
    "1,000-byte writes": lambda data: [data[i : i + 1000] for i in range(0, len(data), 1000)],
    "cut inside the final CRLF CRLF": lambda data: [data[:-3], data[-3:]],
}


@pytest.mark.slow
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT, LIMIT + 1, 17_000, 100_000])
def test_the_head_limit_holds_however_the_bytes_arrive(
    server: Server, size: int, split: str
) -> None:
    raw = exchange(server, SPLITS[split](head(size)))
    [(status, headers, body)] = responses(raw)
    if size <= LIMIT:
        assert (status, body) == (200, HEALTHY)
        return
    assert status == 431
    assert headers["content-type"] == PROBLEM
    assert headers["connection"] == "close"
    assert body == HEAD_TOO_LARGE


@pytest.mark.slow
@pytest.mark.parametrize("split", ["one write", "4 writes"])
def test_a_request_line_over_the_limit_is_431(server: Server, split: str) -> None:
    line = b"GET /users/1?" + b"x" * LIMIT + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    [(status, _, body)] = responses(exchange(server, SPLITS[split](line)))
    assert (status, body) == (431, HEAD_TOO_LARGE)


@pytest.mark.slow
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to an http:// port
    ],
    ids=["negative length", "length and chunked", "tls hello"],
)
def test_bytes_that_are_not_http_get_a_400_problem(server: Server, request_bytes: bytes) -> None:
    """uvicorn answers these in plain text before any app runs; the protocol answers in
    problem+json like every other error (**Fixed**: was `400 Invalid HTTP request received.`)."""
    [(status, headers, body)] = responses(exchange(server, [request_bytes]))
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert body == {
        "type": "/problems/malformed-http",
        "title": "Bad Request",
        "status": 400,
        "detail": "the request is not valid HTTP/1.1 (Invalid HTTP request received)",
    }


@pytest.mark.slow
def test_an_unfinished_head_is_refused_once_it_passes_the_limit(server: Server) -> None:
    started = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * LIMIT  # never ends
    [(status, _, body)] = responses(exchange(server, [started]))
    assert (status, body) == (431, HEAD_TOO_LARGE)


@pytest.mark.slow
def test_an_http_client_sending_a_1mb_header_reads_the_431(server: Server) -> None:
    """The connection is half-closed and drained, not reset, so the client gets the answer."""
    with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT) as client:
        refused = client.get("/healthz", headers={"X-Pad": "a" * 1_000_000})
        assert refused.status_code == 431
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json() == HEAD_TOO_LARGE
        fits = client.get("/healthz", headers={"X-Pad": "a" * (LIMIT - 1024)})
        assert (fits.status_code, fits.json()) == (200, HEALTHY)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["one write", "4 writes"])
def test_pipelined_heads_are_each_counted_and_answered_in_order(server: Server, split: str) -> None:
    small = head(100, close=False)
    over = exchange(server, SPLITS[split](small + small + head(LIMIT + 1) + head(100)))
    assert [(status, body) for status, _, body in responses(over)] == [
        (200, HEALTHY),
        (200, HEALTHY),
        (431, HEAD_TOO_LARGE),  # after the answers before it; what follows it is not read
    ]
    at_limit = exchange(server, SPLITS[split](small + head(LIMIT, close=False) + head(LIMIT)))
    assert [(status, body) for status, _, body in responses(at_limit)] == [(200, HEALTHY)] * 3


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("split", ["one write", "4 writes"])
def test_a_body_never_counts_towards_a_head(
    server: Server, tiny: BuildResult, chunked: bool, split: str
) -> None:
    body = b'{"user_handle": 1, "k": 2}' + b" " * 60_000  # under the 64 KiB body limit
    for following, expected in (
        (head(LIMIT), (200, HEALTHY)),
        (head(LIMIT + 1), (431, HEAD_TOO_LARGE)),
    ):
        raw = exchange(server, SPLITS[split](post(body, chunked=chunked) + following))
        (status, _, predicted), answer = responses(raw)
        assert status == 200
        assert predicted["user_handle"] == 1
        assert predicted["index_version"] == tiny.manifest.version
        assert (answer[0], answer[2]) == expected


def _stream(last: bytes) -> bytes:
    """Pipelined requests of every framing, ending with ``last``."""
    body = b'{"user_handle": 2, "k": 1}' + b" " * 3000
    return (
        b"\r\n"  # an empty line before a request, as RFC 9112 allows
        + head(200, close=False)
        + post(body)
        + post(body, chunked=True)
        + b"GET /healthz HTTP/1.1\r\n\r\n"  # no header at all
        + head(LIMIT, close=False)
        + last
    )


STREAM_ANSWERS = [200, 200, 200, 200, 200]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("last", "expected"),
    [(head(LIMIT), [*STREAM_ANSWERS, 200]), (head(LIMIT + 1), [*STREAM_ANSWERS, 431])],
    ids=["ending at the limit", "ending one byte over"],
)
def test_the_answers_do_not_depend_on_where_the_writes_are_cut(
    server: Server, last: bytes, expected: list[int]
) -> None:
    stream = _stream(last)
    cutter = random.Random(20261204)
    splits = [[stream]] + [
        [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
        for cuts in (sorted(cutter.sample(range(1, len(stream)), 6)) for _ in range(12))
    ]
    # ... and cut next to every CRLF CRLF, where a head or a chunked body ends.
    for end in (m.end() for m in re.finditer(rb"\r\n\r\n", stream)):
        splits += [[stream[: end + offset], stream[end + offset :]] for offset in (-3, -2, -1)]
    for writes in splits:
        answers = responses(exchange(server, writes, pause=0.005))
        assert [status for status, _, _ in answers] == expected, [len(w) for w in writes]
        assert answers[-1][2] == (HEALTHY if expected[-1] == 200 else HEAD_TOO_LARGE)


# --- in process: exact problem bodies ------------------------------------------------------------


@pytest.fixture
async def http(tiny: BuildResult) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(serve_settings(tiny.path.parent)) as client:
        yield client


def invalid(loc: list[str], msg: str, type_: str) -> dict[str, Any]:
    """The 422 /problems/invalid-request body of one error."""
    return {
        "type": "/problems/invalid-request",
        "title": "Invalid request",
        "status": 422,
        "detail": f"{'.'.join(loc)}: {msg}",
        "errors": [{"loc": loc, "msg": msg, "type": type_}],
    }


def assert_exact(response: httpx.Response, status: int, body: dict[str, Any]) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json() == body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "position", "reason"),
    [
        (b'{"user_handle": 2', 17, "Expecting ',' delimiter"),
        (b'{"user_handle": 1,', 18, "Expecting property name enclosed in double quotes"),
        (b'{"user_handle": 1}x', 18, "Extra data"),
        (b'{"user_handle": }', 16, "Expecting value"),
    ],
)
async def test_malformed_json_names_the_character_not_a_field(
    http: httpx.AsyncClient, content: bytes, position: int, reason: str
) -> None:
    response = await http.post("/predict", content=content, headers=JSON)
    msg = f"invalid JSON at character {position}: {reason}"
    assert_exact(response, 422, invalid(["body"], msg, "json_invalid"))


NO_CONTENT_TYPE = {
    "type": "about:blank",
    "title": "Unsupported Media Type",
    "status": 415,
    "detail": "the body has no Content-Type: send it as JSON, with `Content-Type: application/json`",
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/predict", b'{"user_handle": 1}'),
        ("/predict", b'{"user_handle": 2'),  # not even parsed
        ("/predict/batch", b'{"user_handles": [1]}'),
        ("/predict/profile", b'{"interests": ["python"]}'),
    ],
)
async def test_a_body_without_a_content_type_is_415(
    http: httpx.AsyncClient, path: str, content: bytes
) -> None:
    response = await http.post(path, content=content)
    assert "content-type" not in response.request.headers
    assert_exact(response, 415, NO_CONTENT_TYPE)


@pytest.mark.anyio
async def test_other_media_types_are_415_and_no_body_at_all_is_422(
    http: httpx.AsyncClient,
) -> None:
    csv = await http.post("/predict", content=b"1", headers={"content-type": "text/csv"})
    assert_exact(
        csv,
        415,
        {
            **NO_CONTENT_TYPE,
            "detail": "the body is declared as text/csv: send it as JSON, with "
            "`Content-Type: application/json`",
        },
    )
    nothing = await http.post("/predict")
    assert_exact(nothing, 422, invalid(["body"], "Field required", "missing"))


MAX = schemas.MAX_HANDLE
OVER_MAX = f"Input should be less than or equal to {MAX}"
NOT_A_HANDLE = "Input should be an integer or a string of digits"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "handle",
    [MAX + 1, str(MAX + 1), "99999999999999999999", "9" * 5000, 10**30],
    ids=["2**63", "'2**63'", "20 nines as a string", "5,000 nines as a string", "10**30"],
)
async def test_a_handle_out_of_range_is_a_range_error_as_a_string_too(
    http: httpx.AsyncClient, handle: int | str
) -> None:
    response = await http.post("/predict", json={"user_handle": handle})
    assert_exact(response, 422, invalid(["body", "user_handle"], OVER_MAX, "less_than_equal"))
    if isinstance(handle, str):
        path = await http.get(f"/users/{handle}")
        assert_exact(path, 422, invalid(["path", "user_handle"], OVER_MAX, "less_than_equal"))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body_value", "path_text", "expected"),
    [
        (2, "2", 200),
        ("2", "2", 200),
        (" 2 ", "%202%20", 200),
        ("0" * 25 + "2", "0" * 25 + "2", 200),
        (2.0, "2.0", NOT_A_HANDLE),
        ("2.0", "2.0", NOT_A_HANDLE),
        ("+2", "+2", NOT_A_HANDLE),
        ("2e0", "2e0", NOT_A_HANDLE),
        ("٢", "%D9%A2", NOT_A_HANDLE),  # an Arabic-Indic two: a digit, not an ASCII one
        (0, "0", "Input should be greater than or equal to 1"),
        ("0", "0", "Input should be greater than or equal to 1"),
    ],
)
async def test_predict_and_users_apply_one_rule_to_a_handle(
    http: httpx.AsyncClient, body_value: Any, path_text: str, expected: int | str
) -> None:
    predicted = await http.post("/predict", json={"user_handle": body_value, "k": 2})
    user = await http.get(f"/users/{path_text}")
    if expected == 200:
        assert (predicted.status_code, predicted.json()["user_handle"]) == (200, 2)
        assert (user.status_code, user.json()["user_handle"]) == (200, 2)
        return
    assert isinstance(expected, str)
    kind = "handle_type" if expected == NOT_A_HANDLE else "greater_than_equal"
    assert_exact(predicted, 422, invalid(["body", "user_handle"], expected, kind))
    assert_exact(user, 422, invalid(["path", "user_handle"], expected, kind))


@pytest.mark.anyio
async def test_problems_from_the_index_name_its_version(
    http: httpx.AsyncClient, tiny: BuildResult
) -> None:
    version = tiny.manifest.version
    unknown = {
        "type": "/problems/unknown-user",
        "title": "Unknown customer",
        "status": 404,
        "detail": "customer 999999 is not known to the index",
        "user_handle": 999_999,
        "index_version": version,
    }
    assert_exact(await http.post("/predict", json={"user_handle": 999_999}), 404, unknown)
    assert_exact(await http.get("/users/999999"), 404, unknown)
    inactive = await http.post("/predict", json={"user_handle": ZERO_SECONDS})
    assert_exact(
        inactive,
        404,
        {
            "type": "/problems/no-comparable-activity",
            "title": "Customer has no comparable activity",
            "status": 404,
            "detail": f"customer {ZERO_SECONDS} is known but has no comparable activity (no "
            "usable course views, interests or assessments), so has no neighbours",
            "user_handle": ZERO_SECONDS,
            "index_version": version,
        },
    )
    empty = await http.post("/predict/profile", json={"interests": ["nope-zz"]})
    assert_exact(
        empty,
        422,
        {
            "type": "/problems/empty-profile",
            "title": "Nothing known in the profile",
            "status": 422,
            "detail": "the profile contains no tag, course, interest or assessment the index knows",
            "ignored": {"interests": ["nope-zz"]},
            "index_version": version,
        },
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("handles", "k", "total"),
    [(1000, 100, 100_000), (101, 100, 10_100), (1000, 11, 11_000)],
)
async def test_a_batch_over_10000_neighbours_is_422(
    http: httpx.AsyncClient, handles: int, k: int, total: int
) -> None:
    body = {"user_handles": list(range(1, handles + 1)), "k": k}
    response = await http.post("/predict/batch", json=body)
    msg = f"user_handles x k = {total} is over the limit of 10000; split the batch"
    assert_exact(response, 422, invalid(["body"], msg, "batch_too_large"))


@pytest.mark.anyio
@pytest.mark.parametrize(("handles", "k"), [(1000, 10), (100, 100), (1000, 1)])
async def test_a_batch_of_10000_neighbours_or_fewer_is_answered(
    http: httpx.AsyncClient, handles: int, k: int
) -> None:
    response = await http.post(
        "/predict/batch", json={"user_handles": list(range(1, handles + 1)), "k": k}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["not_found"]) > 0  # the tiny index knows only a few of them


# --- the OpenAPI document ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    unused = tmp_path_factory.mktemp("no-artifacts")
    document: dict[str, Any] = create_app(serve_settings(unused)).openapi()
    return document


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value)


def test_openapi_states_limits_in_standard_json_schema(openapi: dict[str, Any]) -> None:
    assert {"ge", "le", "gt", "lt", "min_length", "max_length"}.isdisjoint(_keys(openapi))
    components = openapi["components"]["schemas"]
    handle = components["PredictRequest"]["properties"]["user_handle"]
    assert handle["anyOf"] == [
        {"type": "integer", "minimum": 1, "exclusiveMaximum": 2**63},
        {"type": "string", "pattern": schemas.HANDLE_PATTERN},
    ]
    assert components["BatchRequest"]["properties"]["user_handles"]["items"] == {
        "anyOf": handle["anyOf"]
    }
    batch = components["BatchRequest"]
    assert batch["properties"]["user_handles"]["maxItems"] == 1000
    assert batch["properties"]["user_handles"]["minItems"] == 1
    assert "len(user_handles) x k must be at most 10,000 neighbours" in batch["description"]
    assert batch["properties"]["k"]["maximum"] == 100
    [parameter] = openapi["paths"]["/users/{user_handle}"]["get"]["parameters"]
    assert parameter["schema"] == {
        "type": "integer",
        "minimum": 1,
        "exclusiveMaximum": 2**63,
        "title": "User Handle",
    }
    profile = components["ProfileRequest"]["properties"]
    assert profile["course_tags"]["maxProperties"] == 1000
    assert profile["course_tags"]["propertyNames"] == {"maxLength": 200, "minLength": 1}
    assert profile["interests"]["maxItems"] == 1000
    assert profile["assessments"]["additionalProperties"]["maximum"] == 300


def test_the_handle_pattern_is_the_rule_the_service_applies() -> None:
    pattern = re.compile(schemas.HANDLE_PATTERN)
    accepted = ["1", " 1 ", "\t42\n", "0001", str(MAX)]
    refused = ["", " ", "0", "000", "+1", "-1", "1.0", "1e3", "0x1", "1 2", "\u0661", "\u00a01"]
    for text in accepted:
        assert pattern.fullmatch(text), text
        assert schemas.PredictRequest(user_handle=text).user_handle == int(text)
    for text in refused:
        assert not pattern.fullmatch(text), text
        with pytest.raises(ValueError, match="user_handle"):
            schemas.PredictRequest(user_handle=text)


def test_every_operation_documents_431_500_and_its_problem_body(openapi: dict[str, Any]) -> None:
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    operations = [op for item in openapi["paths"].values() for op in item.values()]
    assert len(operations) == 9
    for operation in operations:
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert response["content"][PROBLEM] == problem, (operation["summary"], status)
        assert "16,384 bytes" in operation["responses"]["431"]["description"]
        assert "Internal error" in operation["responses"]["500"]["description"]
    for path in ("/predict", "/predict/batch", "/predict/profile"):
        too_large = openapi["paths"][path]["post"]["responses"]["413"]["description"]
        assert too_large.startswith("Request body over 65,536 bytes")
    properties = openapi["components"]["schemas"]["Problem"]["properties"]
    assert {"index_version", "user_handle", "ignored", "limit_bytes", "errors"} <= properties.keys()
    assert "HTTPValidationError" not in openapi["components"]["schemas"]
