"""One HTTP exchange with the antispam server, bounded in everything the server sends back.

It knows nothing of callbacks or verdicts: some bytes are POSTed to a URL over a persistent
connection pool, and what comes back is an `Answer` (status, a capped prefix of the body,
whether that was all of it), or a `CallFailed` saying why nothing usable came back. Every byte
from the server is untrusted: the status line and headers are capped in bytes and lines (the
connection is dropped the moment a cap is passed), the body is read only when the caller needs
it and never past `max_response_bytes`, and redirects are never followed, so the bearer token
stays with its host.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from http.cookiejar import CookieJar
from typing import Any, Callable

import attrs
from zope.interface import implementer

from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure as TwistedFailure
from twisted.web import client
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer, IResponse

from synapse_http_antispam.catalogue import json_default
from synapse_http_antispam.verdict import CallFailed, Failure

logger = logging.getLogger(__name__)

# Status line plus headers (1xx interim answers included): far above any real antispam
# server's answer, far below what would hurt Synapse. In the spirit of mature HTTP clients
# (h11 and Go's net/http allow 16 KiB and 1 MiB of headers; nginx 32 KiB for a large header).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 100

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.+?\s-----END CERTIFICATE-----", re.DOTALL
)


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as 0.5.x sent it (servers may hash or log the exact bytes)."""
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=json_default)
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: let JSON escape them instead
        return json.dumps(payload, separators=(",", ":"), default=json_default).encode("ascii")


@attrs.frozen
class Answer:
    """What the server sent back: `body` is all of it only when `complete` is true."""

    status: int
    body: bytes = b""
    complete: bool = True
    content_type: str = ""
    # Every Cache-Control header line, joined with ", " (untrusted: `reuse.max_age` reads it).
    cache_control: str = ""
    # A redirect's target (never followed; `answers.detail` shows it to the admin).
    location: str = ""
    # For a body nobody needs: fires (with None) once it has been read away, cut at the cap,
    # or broken off; cancelling it drops the connection. Waiting for it keeps the connection
    # reusable; its outcome changes nothing about the answer.
    rest: Deferred[Any] | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def json_declared(self) -> bool:
        return "json" in self.content_type.lower()


def load_ca_certificates(path: str) -> list[Any]:
    """Every certificate in a PEM file (a bundle or a chain), parsed; raises ValueError when
    the file holds none or one that does not parse, so that config validation can say so."""
    from twisted.internet import ssl

    with open(path, "rb") as f:
        blocks = _PEM_CERTIFICATE.findall(f.read())
    if not blocks:
        raise ValueError("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(ssl.Certificate.loadPEM(block))
        except Exception:
            raise ValueError(f"certificate number {number} in the file is not valid") from None
    return certificates


def _trust_policy(ca_file: str | None) -> Any:
    if ca_file is None:
        return client.BrowserLikePolicyForHTTPS()
    from twisted.internet import ssl

    root = ssl.trustRootFromCertificates(load_ca_certificates(ca_file))
    return client.BrowserLikePolicyForHTTPS(trustRoot=root)


@implementer(IAgentEndpointFactory)
@attrs.frozen
class _Endpoints:
    """How the pool connects to base_url's host: an IPv4 address directly, a name as Twisted's
    Agent does (config.py refuses an IPv6 address). HostnameEndpoint tries a name's addresses
    0.3 s apart (RFC 8305's connection attempt delay) and notices that the last one failed only
    at the next tick, so a refused connection cost every check 0.3 s; an address needs neither
    a lookup nor that race."""

    reactor: Any
    policy: Any  # IPolicyForHTTPS: https only
    timeout: float

    def endpointForURI(self, uri: client.URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port, timeout=self.timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port, timeout=self.timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class _Stale(Exception):
    """A pooled connection died before any byte of the answer: the POST is safe to resend."""


class _NoCookies(CookieJar):
    """The antispam server's cookies are neither kept nor sent back: treq's own jar keeps every
    one without bound (each request head grows with them), and reading a Set-Cookie that is
    not ASCII raises, which turned a good answer into a `connect` failure."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def add_cookie_header(self, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Any) -> None:
        pass


@implementer(IBodyProducer)
class _BytesProducer:
    """Writes the whole body at once (treq's default producer trickles it via a cooperator)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _CappedHeadersProtocol(HTTP11ClientProtocol):
    """Twisted's HTTP/1.1 client, but the status line and headers of an answer (with any 1xx
    answers before it) may not pass MAX_HEADER_BYTES or MAX_HEADER_LINES: Twisted itself
    bounds only the length of one line, not how many lines come. Each line is counted as the
    parser takes it, and the connection is dropped at the first line past a cap."""

    _header_bytes = 0
    _header_lines = 0
    # Why the answer's head was refused (too large, not HTTP), once it was.
    _refused: Failure | None = None

    def request(self, request: Any) -> Deferred[Any]:
        self._header_bytes = self._header_lines = 0
        self._refused = None
        d: Deferred[Any] = super().request(request)
        parser = self._parser
        if parser is not None:
            parse_line = parser.lineReceived

            def counted(line: bytes) -> Any:
                if parser.state in (STATUS, HEADER):  # a 1xx answer starts the parser over
                    # The line comes with its "\r" (Twisted splits at "\n"): add the "\n".
                    self._header_bytes += len(line) + 1
                    self._header_lines += 1
                    if (
                        self._header_bytes > MAX_HEADER_BYTES
                        or self._header_lines > MAX_HEADER_LINES
                    ):
                        self._refused = Failure.TOO_LARGE
                    elif parser.state == STATUS and not line.startswith(b"HTTP/1."):
                        # Twisted reads any "X/a.b 200" as HTTP: "HTP/1.1 200" or "RTSP/1.0
                        # 200" is not an antispam server's 2xx, and must not allow anything.
                        self._refused = Failure.BAD_RESPONSE
                    if self._refused is not None:
                        self.transport.abortConnection()  # type: ignore[union-attr]
                        return True  # stops the line receiver's loop
                return parse_line(line)  # type: ignore[no-untyped-call]

            parser.lineReceived = counted  # type: ignore[method-assign]

        def name_the_cause(failure: TwistedFailure) -> Any:
            if self._refused is not None:
                raise CallFailed(self._refused)
            return failure

        return d.addErrback(name_the_cause)


class _CappedHeadersFactory(client._HTTP11ClientFactory):
    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _CappedHeadersProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]


class _Pool(client.HTTPConnectionPool):
    """A pool of header-capped connections that remembers whether the last connection it
    gave out was reused: Twisted only retries idempotent methods on a stale pooled
    connection, and our POSTs are safe to resend exactly when the connection was reused and
    died before any response byte."""

    _factory = _CappedHeadersFactory
    retryAutomatically = False
    reused = False

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor, persistent=True)  # type: ignore[no-untyped-call]

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        self.reused = True
        return super().getConnection(key, endpoint)

    def _newConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        self.reused = False
        return super()._newConnection(key, endpoint)  # type: ignore[no-any-return,unused-ignore]


class _CappedBody(TwistedProtocol):
    """Collects at most `limit` bytes of a body, then drops the connection: the result is
    (the first bytes, whether that was the whole body)."""

    def __init__(self, limit: int, declared: int | None) -> None:
        self.finished: Deferred[tuple[bytes, bool]] = Deferred(lambda _: self.abort())
        self._limit = limit
        self._declared = declared
        self._chunks: list[bytes] = []
        self._size = 0

    def abort(self) -> None:
        # For a response body, the transport is a producer: stopping it drops the connection.
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _cut(self) -> None:
        if not self.finished.called:
            self.finished.callback((b"".join(self._chunks)[: self._limit], False))
        self._chunks.clear()
        self.abort()

    def connectionMade(self) -> None:
        if self._declared is not None and self._declared > self._limit:
            self._cut()  # announced too large: not one byte of it is read

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        self._chunks.append(data)
        if self._size > self._limit:
            self._cut()

    def connectionLost(self, reason: TwistedFailure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason.check(client.ResponseDone, PotentialDataLoss):
            self.finished.callback((b"".join(self._chunks), True))
        else:
            self.finished.errback(CallFailed(Failure.CONNECT))


class _Discard(TwistedProtocol):
    """Drops the connection of an answer nobody will read."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


def _header(response: IResponse, name: bytes) -> str:
    """Every line of one header, joined with ", ", as Latin-1: the server's bytes are
    untrusted, and a value that is not UTF-8 must not raise (Twisted decodes str names' values
    as UTF-8)."""
    lines = response.headers.getRawHeaders(name) or []
    return ", ".join(line.decode("latin-1") for line in lines)


def _read_body(response: IResponse, limit: int) -> Deferred[tuple[bytes, bool]]:
    declared = None if response.length is UNKNOWN_LENGTH else int(response.length)
    reader = _CappedBody(limit, declared)
    response.deliverBody(reader)
    return reader.finished


def _is_tls(reason: TwistedFailure) -> bool:
    return reason.type is not None and reason.type.__module__.split(".")[0] in (
        "OpenSSL",
        "service_identity",
    )


def _tls_trouble(reasons: list[TwistedFailure]) -> bool:
    """Whether a failed connection failed in TLS (certificate, host name, handshake)."""
    return any(_is_tls(r) for r in reasons)


def _words(value: object) -> str:
    """An exception's text in one line; pyOpenSSL's nested error tuples flattened."""
    if isinstance(value, (list, tuple)):
        return "; ".join(w for w in (_words(v) for v in value) if w)
    if isinstance(value, BaseException) and type(value).__module__.startswith("OpenSSL"):
        return _words(value.args)
    return " ".join(str(value).split())


def _cause(reasons: list[TwistedFailure], tls: bool) -> str:
    """The resolver's, the socket's or the TLS library's own words for why no answer came
    (shortened), for logs and `check`: "could not connect" alone cannot tell a host name that
    does not resolve from a closed port, nor which certificate check failed."""
    chosen = [r for r in reasons if _is_tls(r)] if tls else reasons
    return "; ".join(_words(r.value) for r in chosen)[:200]


class Wire:
    """POSTs to `<base_url>/<name>` over one connection pool per module instance."""

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        base_url: str,
        headers: Mapping[str, str],
        max_connections: int,
        connect_timeout: float,
        max_response_bytes: int,
        ca_file: str | None = None,
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    ) -> None:
        self._log = log  # the instance's log: its lines start with `[name]`
        self._base_url = base_url
        self._headers = {name: [value] for name, value in headers.items()}
        self._max_response_bytes = max_response_bytes
        self._pool = _Pool(reactor)
        self._pool.maxPersistentPerHost = max_connections
        self._pool.cachedConnectionTimeout = 60
        endpoints = _Endpoints(reactor, _trust_policy(ca_file), connect_timeout)
        agent = client.Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool)
        # treq before 23 has no IndexableCookieJar to subclass; any CookieJar works with both.
        self._http = HTTPClient(agent, cookiejar=_NoCookies())  # type: ignore[arg-type]

    def set_header(self, name: str, value: str) -> None:
        """Send this header value from the next request on (a rotated token)."""
        self._headers[name] = [value]

    async def post(
        self, name: str, body: bytes, request_id: str, body_needed: Callable[[int], bool]
    ) -> Answer:
        """One exchange. The body of the answer is read only when `body_needed(status)`;
        otherwise the answer comes at once, with the body still arriving in `rest`. Cancel
        the returned coroutine to give up."""
        url = f"{self._base_url}/{name}"
        headers = Headers({**self._headers, "X-Request-ID": [request_id]})
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("POST %s %s", url, body[:2048].decode("utf-8", "replace"))
        response = await self._request(url, body, headers)
        try:
            content_type = _header(response, b"content-type")
            cache_control = _header(response, b"cache-control")
            location = _header(response, b"location") if 300 <= response.code < 400 else ""
            needed = body_needed(response.code)
        except Exception:  # a bug here must not leave the connection open and unread
            response.deliverBody(_Discard())
            self._log.exception("Antispam answer to %s could not be read", name)
            raise CallFailed(Failure.INTERNAL) from None
        if not needed:
            rest = _read_body(response, self._max_response_bytes)
            rest.addErrback(lambda failure: failure.trap(CallFailed) and None)
            return Answer(
                response.code, content_type=content_type, cache_control=cache_control, rest=rest
            )
        content, complete = await _read_body(response, self._max_response_bytes)
        return Answer(response.code, content, complete, content_type, cache_control, location)

    async def _request(self, url: str, body: bytes, headers: Headers) -> IResponse:
        try:
            return await self._attempt(url, body, headers, may_retry=True)
        except _Stale:
            self._log.debug("Pooled connection to antispam server was closed; retrying once")
            return await self._attempt(url, body, headers, may_retry=False)

    async def _attempt(
        self, url: str, body: bytes, headers: Headers, *, may_retry: bool
    ) -> IResponse:
        """One try. Raises _Stale where a retry is safe: the connection was a pooled one, it
        died before any byte of an answer, and this is the first try."""
        # unbuffered: treq would otherwise keep its own copy of every body, uncapped.
        d = self._http.request(
            "POST",
            url,
            data=_BytesProducer(body),
            headers=headers,
            allow_redirects=False,
            unbuffered=True,
        )
        reused = self._pool.reused
        try:
            response: IResponse = await d
            return response
        except (client.ResponseNeverReceived, client.RequestTransmissionFailed) as e:
            reasons, unanswered = e.reasons, True
        except (CancelledError, CallFailed):
            raise
        except Exception as e:
            reasons, unanswered = getattr(e, "reasons", None) or [TwistedFailure(e)], False
        if any(reason.check(CancelledError) for reason in reasons):
            # However it surfaced (ResponseFailed after part of the headers, too): the
            # caller's cancellation, not the server's fault.
            raise CancelledError()
        tls = _tls_trouble(reasons)
        if unanswered and not tls and reused and may_retry:
            raise _Stale()
        raise CallFailed(Failure.TLS if tls else Failure.CONNECT, detail=_cause(reasons, tls))

    async def close(self) -> None:
        await self._pool.closeCachedConnections()  # type: ignore[no-untyped-call]
