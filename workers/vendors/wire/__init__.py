"""pushq's one HTTP client for the three push vendors: HTTP/2 (``h2``) and HTTP/1.1 (``h11``) on asyncio.

Each concern lives once, in its own module with its own tests:

* :mod:`.answer` -- the request and answer types and the errors, which say
  whether a request may have reached the vendor (never re-sent then);
* :mod:`.addresses` -- resolving a host and connecting only to addresses the
  egress rules allow (:mod:`shared.egress`), within the connect timeout;
* :mod:`.http1` -- one HTTP/1.1 keep-alive connection;
* :mod:`.http2` -- one HTTP/2 connection multiplexing streams under the peer's
  ``MAX_CONCURRENT_STREAMS`` and flow control;
* :mod:`.client` -- the pool per origin (the protocol chosen by ALPN for
  https, by configuration for plain http), the overall deadline of a request,
  bounded answers, no redirects (an answer is returned as it is), fork safety.

The adapters (``workers/adapters``) build requests and map answers to outcomes;
nothing here knows of deliveries or vendors.
"""

from workers.vendors.wire.answer import (
    Answer,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    EgressRefused,
    Headers,
    NotSent,
    Request,
    WireError,
)
from workers.vendors.wire.client import Protocol, WireClient

__all__ = ["Answer", "ConnectFailed", "ConnectTimeout", "ConnectionLost", "EgressRefused", "Headers", "NotSent", "Protocol", "Request",
           "WireClient", "WireError"]
