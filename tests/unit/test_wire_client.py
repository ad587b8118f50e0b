"""The wire client (workers/vendors/wire) over real sockets, one concern per test.

HTTP/1.1 against a threaded ``http.server``, HTTP/2 against the small h2 server of
tests/support/wire_servers.py (h2c, or TLS with ALPN), the egress policy against
loopback, fork safety with a real fork.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from standins.tls import make_test_certificate, remove_directory
from tests.support.wire_servers import h2_server
from workers.vendors.wire import (
    ConnectFailed,
    ConnectionLost,
    EgressRefused,
    NotSent,
    Protocol,
    Request,
    WireClient,
)
from workers.vendors.wire.addresses import AddressPolicy


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


class Http1Service:
    """Each path its own answer; counts connections (keep-alive observable)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.active = 0
        self.peak_active = 0
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with service.lock:
                    service.connections += 1

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with service.lock:
                    service.active += 1
                    service.peak_active = max(service.peak_active, service.active)
                try:
                    self.answer(self.path.strip("/").split("/"))
                finally:
                    with service.lock:
                        service.active -= 1

            def answer(self, parts: list[str]) -> None:
                kind = parts[0]
                if kind == "ok":
                    self.reply(201, b"created", {"Location": "/m/1", "X-Odd": "caf\xe9"})
                elif kind == "slow":
                    time.sleep(float(parts[1]))
                    self.reply(200, b"late")
                elif kind == "redirect":
                    self.reply(302, b"", {"Location": "http://127.0.0.1:9/elsewhere"})
                elif kind == "endless":
                    self.send_response(200)
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(b"x" * 65536)
                    except OSError:
                        pass
                elif kind == "tarpit":
                    try:
                        for byte in b"HTTP/1.1 200 OK\r\n":
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                    self.close_connection = True
                elif kind == "cut":  # promises 100 bytes, sends 10, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    self.close_connection = True

            def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https://localhost' if tls else 'http://127.0.0.1'}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def http1() -> Iterator[Http1Service]:
    service = Http1Service()
    yield service
    service.close()


@pytest.fixture(scope="module")
def certificate():  # type: ignore[no-untyped-def]
    cert = make_test_certificate()
    yield cert
    remove_directory(cert)


def server_context(certificate, alpn: list[str]) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert_path, certificate.key_path)
    context.set_alpn_protocols(alpn)
    return context


def post(url: str, body: bytes = b"hello") -> Request:
    return Request("POST", url, [("content-type", "application/octet-stream")], body)


# -- HTTP/1.1 ------------------------------------------------------------------

def test_http1_keeps_the_connection_alive_between_requests(http1):
    async def main() -> list[int]:
        client = WireClient()
        before = http1.connections
        statuses = [(await client.request(post(f"{http1.url}/ok"), deadline=5)).status for _ in range(3)]
        await client.close()
        return [*statuses, http1.connections - before]

    assert run(main()) == [201, 201, 201, 1]


def test_http1_answer_headers_are_kept_as_the_server_sent_them(http1):
    async def main():  # type: ignore[no-untyped-def]
        client = WireClient()
        answer = await client.request(post(f"{http1.url}/ok"), deadline=5)
        await client.close()
        return answer

    answer = run(main())
    assert (answer.status, answer.body, answer.complete, answer.http_version) == (201, b"created", True, "1.1")
    assert answer.headers.get("location") == "/m/1" and answer.headers.get("LOCATION") == "/m/1"
    assert answer.headers.get("x-odd") == "caf\udce9"  # latin-1 on the wire: not UTF-8, kept escaped


def test_a_redirect_is_an_answer_never_followed(http1):
    async def main():  # type: ignore[no-untyped-def]
        client = WireClient()
        answer = await client.request(post(f"{http1.url}/redirect"), deadline=5)
        await client.close()
        return answer

    answer = run(main())
    assert answer.status == 302 and answer.headers.get("location") == "http://127.0.0.1:9/elsewhere"


def test_http1_reads_an_endless_answer_only_up_to_the_bound(http1):
    async def main():  # type: ignore[no-untyped-def]
        client = WireClient()
        answer = await client.request(post(f"{http1.url}/endless"), deadline=5, max_body=1000)
        again = await client.request(post(f"{http1.url}/ok"), deadline=5)  # a new connection serves the next
        await client.close()
        return answer, again

    answer, again = run(main())
    assert answer.status == 200 and len(answer.body) == 1000 and not answer.complete
    assert again.status == 201


def test_the_deadline_bounds_the_whole_request_though_bytes_keep_coming(http1):
    async def main() -> float:
        client = WireClient()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request(post(f"{http1.url}/tarpit"), deadline=1.0)
        await client.close()
        return time.monotonic() - started

    assert 0.9 < run(main()) < 5.0


def test_an_answer_cut_short_is_a_lost_connection(http1):
    async def main() -> None:
        client = WireClient()
        with pytest.raises(ConnectionLost):
            await client.request(post(f"{http1.url}/cut"), deadline=5)
        await client.close()

    run(main())


def test_http1_pool_opens_at_most_its_limit_and_requests_wait_for_a_connection():
    service = Http1Service()
    try:
        async def main() -> list[int]:
            client = WireClient(max_http1_connections=2)
            answers = await asyncio.gather(*(client.request(post(f"{service.url}/slow/0.2"), deadline=10)
                                             for _ in range(6)))
            await client.close()
            return [answer.status for answer in answers]

        assert run(main()) == [200] * 6
        assert service.connections == 2 and service.peak_active == 2
    finally:
        service.close()


def test_a_refused_connection_is_connect_failed():
    async def main() -> None:
        client = WireClient(connect_timeout=2)
        with pytest.raises(ConnectFailed):
            await client.request(post("http://127.0.0.1:9/x"), deadline=5)

    run(main())


# -- HTTP/2 ---------------------------------------------------------------------

def test_http2_multiplexes_concurrent_requests_on_one_connection():
    with h2_server() as server:
        async def main() -> list[tuple[int, str]]:
            client = WireClient(cleartext=Protocol.HTTP2)
            answers = await asyncio.gather(*(client.request(post(f"{server.url}/slow/0.2"), deadline=10)
                                             for _ in range(20)))
            await client.close()
            return [(answer.status, answer.http_version) for answer in answers]

        assert run(main()) == [(200, "2")] * 20
        assert server.connections == 1 and server.peak_streams == 20


def test_http2_keeps_to_the_servers_concurrent_stream_limit():
    with h2_server(max_concurrent_streams=3) as server:
        async def main() -> list[int]:
            client = WireClient(cleartext=Protocol.HTTP2)
            answers = await asyncio.gather(*(client.request(post(f"{server.url}/slow/0.05"), deadline=10)
                                             for _ in range(30)))
            await client.close()
            return [answer.status for answer in answers]

        assert run(main()) == [200] * 30
        assert server.connections == 1 and server.peak_streams == 3


def test_http2_opens_more_connections_only_up_to_its_limit_when_streams_run_out():
    with h2_server(max_concurrent_streams=2) as server:
        async def main() -> list[int]:
            client = WireClient(cleartext=Protocol.HTTP2, max_http2_connections=3)
            answers = await asyncio.gather(*(client.request(post(f"{server.url}/slow/0.1"), deadline=10)
                                             for _ in range(12)))
            await client.close()
            return [answer.status for answer in answers]

        assert run(main()) == [200] * 12
        assert server.connections == 3


def test_http2_body_waits_for_the_servers_flow_control_window():
    with h2_server(initial_window_size=1000) as server:
        async def main():  # type: ignore[no-untyped-def]
            client = WireClient(cleartext=Protocol.HTTP2)
            answer = await client.request(post(f"{server.url}/echo", b"y" * 5000), deadline=5)
            await client.close()
            return answer

        answer = run(main())
        assert (answer.status, answer.body) == (200, b"5000")


def test_http2_acknowledges_received_data_so_answers_never_stall():
    with h2_server() as server:
        async def main() -> list[int]:
            client = WireClient(cleartext=Protocol.HTTP2)
            # 40 answers of 10 KB on one connection: 400 KB, far beyond the 64 KiB initial window.
            answers = [await client.request(post(f"{server.url}/big/10000"), deadline=5, max_body=20000)
                       for _ in range(40)]
            await client.close()
            return [len(answer.body) for answer in answers]

        assert run(main()) == [10000] * 40
        assert server.connections == 1


def test_http2_reads_an_answer_only_up_to_the_bound_and_keeps_the_connection():
    with h2_server() as server:
        async def main():  # type: ignore[no-untyped-def]
            client = WireClient(cleartext=Protocol.HTTP2)
            cut = await client.request(post(f"{server.url}/big/1000000"), deadline=5, max_body=5000)
            fine = await client.request(post(f"{server.url}/ok"), deadline=5)
            await client.close()
            return cut, fine

        cut, fine = run(main())
        assert cut.status == 200 and len(cut.body) == 5000 and not cut.complete
        assert fine.status == 200 and server.connections == 1


def test_http2_a_stream_refused_unprocessed_is_not_sent():
    with h2_server() as server:
        async def main() -> None:
            client = WireClient(cleartext=Protocol.HTTP2)
            with pytest.raises(NotSent):
                await client.request(post(f"{server.url}/refuse"), deadline=5)
            await client.close()

        run(main())
        assert server.paths["/refuse"] == 3  # tried on a connection up to three times: it never left


def test_http2_goaway_retries_only_the_streams_the_server_never_processed():
    with h2_server() as server:
        async def main() -> list[object]:
            client = WireClient(cleartext=Protocol.HTTP2)
            slow = asyncio.ensure_future(client.request(post(f"{server.url}/slow/2"), deadline=5))
            await asyncio.sleep(0.2)
            answers = await asyncio.gather(slow, client.request(post(f"{server.url}/goaway"), deadline=5),
                                           return_exceptions=True)
            await client.close()
            return answers

        slow, goaway = run(main())
        assert isinstance(slow, ConnectionLost)  # written before the GOAWAY: may have been acted on, not re-sent
        assert goaway.status == 200 and goaway.body == b"after goaway"  # above its last stream: sent again
        assert server.paths["/slow/2"] == 1 and server.paths["/goaway"] == 2 and server.connections == 2


def test_http2_a_late_answer_is_counted_and_keeps_the_connection():
    late: list[int] = []
    with h2_server() as server:
        async def main() -> int:
            client = WireClient(cleartext=Protocol.HTTP2, on_late_answer=lambda: late.append(1))
            with pytest.raises(TimeoutError):
                await client.request(post(f"{server.url}/slow/0.6"), deadline=0.3)
            fine = await client.request(post(f"{server.url}/ok"), deadline=5)
            await asyncio.sleep(0.6)
            await client.close()
            return fine.status

        assert run(main()) == 200
        assert late == [1] and server.connections == 1


def test_http2_a_silent_connection_is_dropped_when_a_ping_after_a_timeout_goes_unanswered():
    with h2_server() as server:
        async def main() -> int:
            client = WireClient(cleartext=Protocol.HTTP2, connect_timeout=0.5)  # the PING's answer too
            await client.request(post(f"{server.url}/ok"), deadline=5)
            server.frozen = True  # from now on the server reads nothing and says nothing
            with pytest.raises(TimeoutError):
                await client.request(post(f"{server.url}/ok"), deadline=0.3)
            await asyncio.sleep(1.0)  # the PING goes unanswered
            server.frozen = False
            answer = await client.request(post(f"{server.url}/ok"), deadline=5)
            await client.close()
            return answer.status

        assert run(main()) == 200
        assert server.connections == 2


# -- TLS and ALPN ---------------------------------------------------------------

def test_https_speaks_http2_when_the_server_offers_it_by_alpn(certificate):
    with h2_server(tls=server_context(certificate, ["h2", "http/1.1"])) as server:
        async def main():  # type: ignore[no-untyped-def]
            client = WireClient(ca_file=certificate.ca_path)
            answer = await client.request(post(f"{server.url}/ok"), deadline=5)
            protocol = client.protocol(server.url)
            await client.close()
            return answer.http_version, protocol

        assert run(main()) == ("2", Protocol.HTTP2)


def test_https_speaks_http1_when_the_server_offers_only_that(certificate):
    service = Http1Service(tls=server_context(certificate, ["http/1.1"]))
    try:
        async def main():  # type: ignore[no-untyped-def]
            client = WireClient(ca_file=certificate.ca_path)
            answers = [await client.request(post(f"{service.url}/ok"), deadline=5) for _ in range(2)]
            protocol = client.protocol(service.url)
            await client.close()
            return [a.http_version for a in answers], protocol

        assert run(main()) == (["1.1", "1.1"], Protocol.HTTP1)
        assert service.connections == 1
    finally:
        service.close()


def test_https_with_an_untrusted_certificate_is_connect_failed(certificate):
    with h2_server(tls=server_context(certificate, ["h2"])) as server:
        async def main() -> None:
            client = WireClient()  # the system's CAs: the test CA is not among them
            with pytest.raises(ConnectFailed):
                await client.request(post(f"{server.url}/ok"), deadline=5)

        run(main())
        assert server.paths["/ok"] == 0


# -- egress ----------------------------------------------------------------------

def test_the_public_policy_refuses_a_name_resolving_to_loopback_before_connecting(http1):
    before = http1.connections

    async def main() -> None:
        client = WireClient(policy=AddressPolicy.PUBLIC)
        with pytest.raises(EgressRefused):
            await client.request(post(f"http://localhost:{http1.port}/ok"), deadline=5)

    run(main())
    assert http1.connections == before


def test_the_development_policy_allows_loopback(http1):
    async def main() -> int:
        client = WireClient(policy=AddressPolicy.PUBLIC_OR_LOOPBACK)
        answer = await client.request(post(f"http://localhost:{http1.port}/ok"), deadline=5)
        await client.close()
        return answer.status

    assert run(main()) == 201


# -- fork safety ---------------------------------------------------------------------

def test_a_forked_child_never_uses_its_parents_connections():
    with h2_server() as server:
        loop = asyncio.new_event_loop()
        client = WireClient(cleartext=Protocol.HTTP2)
        try:
            assert loop.run_until_complete(client.request(post(f"{server.url}/ok"), deadline=5)).status == 200
            read, write = os.pipe()
            child = os.fork()
            if child == 0:  # the child: a loop of its own, the same client object
                status = 1
                try:
                    answer = asyncio.run(client.request(post(f"{server.url}/ok"), deadline=5))
                    status = 0 if answer.status == 200 else 2
                finally:
                    os.write(write, bytes([status]))
                    os._exit(0)
            os.close(write)
            os.waitpid(child, 0)
            assert os.read(read, 1) == b"\x00"
            os.close(read)
            # The child connected anew; the parent's connection is still the parent's and works.
            assert server.connections == 2
            assert loop.run_until_complete(client.request(post(f"{server.url}/ok"), deadline=5)).status == 200
            assert server.connections == 2
        finally:
            loop.run_until_complete(client.close())
            loop.close()
