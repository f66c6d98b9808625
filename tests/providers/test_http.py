"""The SDKs' HTTP transport (``providers/_http.py``): aiohttp under an ``httpx2`` client.

Each test sends through ``httpx2.AsyncClient(transport=AiohttpTransport(...))`` (what the
adapters hand their SDK) to a real server on loopback, and states what the SDKs rely on:
the body as it arrives, the errors as httpx's, TLS verified with the context given, the
proxy the environment names.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turnlog.config import Settings
from turnlog.models import ProviderSpec
from turnlog.providers._http import AiohttpTransport, body_chunks
from turnlog.providers._tls import tls_context
from turnlog.providers.base import StepEnd
from turnlog.providers.openai import OpenAIProvider

from .fakeserver import FakeServer, Hold, Pause, Reply, json_reply
from .test_openai import request

SSE = {"content-type": "text/event-stream"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def srv() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def client(context: ssl.SSLContext | None = None, read: float = 10.0) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=AiohttpTransport(ssl_context=context or tls_context()),
        timeout=httpx2.Timeout(read, connect=5.0),
    )


async def body_of(http: httpx2.AsyncClient, url: str) -> list[bytes]:
    async with http.stream("POST", url, content=b"{}") as response:
        return [chunk async for chunk in body_chunks(response)]


@pytest.mark.anyio
async def test_the_body_comes_as_it_arrives(srv: FakeServer) -> None:
    """Each piece the server flushes is one chunk of the body, in order, bytes intact."""
    srv.queue(Reply(200, SSE, [b"data: 1\n\n", Pause(0.05), "data: é\n\n".encode(), Pause(0.05)]))
    async with client() as http:
        chunks = await body_of(http, srv.url + "/x")
    assert b"".join(chunks) == "data: 1\n\ndata: é\n\n".encode()
    assert len(chunks) == 2


@pytest.mark.anyio
async def test_a_frame_split_across_reads_is_one_event(srv: FakeServer) -> None:
    """A Chat Completions frame cut mid-JSON and mid-line by the network is read whole."""
    whole = b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n'
    srv.queue(
        Reply(
            200,
            SSE,
            [whole[:20], Pause(0.05), whole[20:-1], Pause(0.05), whole[-1:], b"data: [DONE]\n\n"],
        )
    )
    spec = ProviderSpec(name="openai", kind="openai", base_url=srv.url + "/v1", api_key="k")
    items = [item async for item in OpenAIProvider(spec, Settings()).stream(request())]
    assert [getattr(i, "text", None) for i in items[:-1]] == ["Hello"]
    assert isinstance(items[-1], StepEnd)


@pytest.mark.anyio
async def test_an_encoded_body_is_decoded(srv: FakeServer) -> None:
    """A gzip body (a proxy compressing the stream) is read through httpx's decoding."""
    srv.queue(Reply(200, {**SSE, "content-encoding": "gzip"}, [gzip.compress(b"data: 1\n\n")]))
    async with client() as http:
        assert b"".join(await body_of(http, srv.url + "/x")) == b"data: 1\n\n"


@pytest.mark.anyio
async def test_the_request_goes_out_as_httpx_built_it(srv: FakeServer) -> None:
    """Method, path, query, headers and body reach the server unchanged; the status and
    headers come back."""
    srv.queue(json_reply(429, {"error": "slow down"}, {"retry-after": "3"}))
    async with client() as http:
        response = await http.post(
            srv.url + "/v1/x?a=1", content=b'{"k": 1}', headers={"authorization": "Bearer t"}
        )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json() == {"error": "slow down"}
    (got,) = srv.requests
    assert (got.method, got.path, got.query, got.body) == (
        "POST",
        "/v1/x",
        {"a": ["1"]},
        b'{"k": 1}',
    )
    assert got.headers["authorization"] == "Bearer t"


@pytest.mark.anyio
async def test_a_refused_connection_is_a_connect_error() -> None:
    """Nobody listening: httpx's ConnectError (the SDKs' APIConnectionError, retryable),
    not a timeout."""
    with FakeServer() as gone:
        url = gone.url
    async with client() as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post(url + "/x", content=b"{}")


@pytest.mark.anyio
async def test_a_stalled_body_is_a_read_timeout(srv: FakeServer) -> None:
    """Nothing for the read timeout after a first chunk: httpx's ReadTimeout."""
    srv.queue(Reply(200, SSE, [b"data: 1\n\n", Hold(5)]))
    async with client(read=0.3) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await body_of(http, srv.url + "/x")


@pytest.mark.anyio
async def test_a_slow_reader_is_no_read_timeout(srv: FakeServer) -> None:
    """The read timeout times the server, not the reader: a reader that waits longer than
    it between chunks already sent still gets every chunk."""
    srv.queue(Reply(200, SSE, [b"data: 1\n\n", Pause(0.05), b"data: 2\n\n"]))
    got = b""
    async with client(read=0.2) as http, http.stream("POST", srv.url + "/x") as response:
        async for chunk in body_chunks(response):
            got += chunk
            await anyio.sleep(0.5)
    assert got == b"data: 1\n\ndata: 2\n\n"


@pytest.mark.anyio
async def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    """Connected, the request sent, no response head within the read timeout: ReadTimeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        async with client(read=0.3) as http:
            with pytest.raises(httpx2.ReadTimeout):
                await http.post(f"http://127.0.0.1:{port}/x", content=b"{}")


@pytest.mark.anyio
async def test_a_body_cut_short_is_a_transport_error() -> None:
    """The server hangs up before the chunked body's end: an httpx transport error, not a
    quiet end of the stream."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                while b"\r\n\r\n" not in conn.recv(65536):
                    pass
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
                )

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        async with client() as http:
            with pytest.raises(httpx2.TransportError) as info:
                await body_of(http, f"http://127.0.0.1:{port}/x")
        thread.join(10)
    assert isinstance(info.value, httpx2.RemoteProtocolError | httpx2.ReadError)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.anyio
async def test_tls_is_verified_with_the_context_given(tmp_path: Path) -> None:
    """An HTTPS server is trusted exactly when the transport's context trusts its
    certificate: the default context refuses a self-signed one (a ConnectError)."""
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                try:
                    with server_context.wrap_socket(conn, server_side=True) as tls:
                        while b"\r\n\r\n" not in tls.recv(65536):
                            pass
                        tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ndata: 1\n\n")
                except (ssl.SSLError, OSError):
                    conn.close()  # the refused handshake

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        url = f"https://127.0.0.1:{port}/x"
        async with client() as http:
            with pytest.raises(httpx2.ConnectError, match="certificate"):
                await http.post(url, content=b"{}")
        async with client(ssl.create_default_context(cafile=str(cert))) as http:
            assert await body_of(http, url) == [b"data: 1\n\n"]
        thread.join(10)


@pytest.mark.anyio
async def test_the_proxy_the_environment_names(
    srv: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY sends the request through the proxy (absolute URL, the target's Host);
    a host in NO_PROXY is asked directly."""
    with FakeServer() as direct:
        monkeypatch.setenv("HTTP_PROXY", srv.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        srv.queue(json_reply(200, {"via": "proxy"}))
        direct.queue(json_reply(200, {"via": "direct"}))
        async with client() as http:
            proxied = await http.post("http://model.test/v1/x", content=b"{}")
            assert proxied.json() == {"via": "proxy"}
            assert (await http.post(direct.url + "/v1/y", content=b"{}")).json() == {
                "via": "direct"
            }
        (through,) = srv.requests
        assert (through.path, through.headers["host"]) == ("/v1/x", "model.test")
        assert [r.path for r in direct.requests] == ["/v1/y"]
