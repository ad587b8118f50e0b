"""The web client kit under ``/client/…``: a service worker, a subscribe script and a page that uses them.

Static files shipped inside the package (``api/client/``), served with the
content types browsers insist on (a service worker must be JavaScript) and
revalidated on every load (``no-cache`` with an ETag), so a new release of the
service worker reaches browsers at their next visit. Only the files listed
here are served.

The service worker is sent with ``Service-Worker-Allowed: /`` so a site that
serves the kit under ``/client/`` on its own origin (behind a reverse proxy)
may register it for its whole origin. It has no ``fetch`` handler: it only
shows pushes and opens their URL.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import abort, request
from werkzeug.wrappers import Response

from api.endpoints import page_blueprint

bp = page_blueprint("client_kit", __name__, "/client")

CLIENT_DIR = Path(__file__).resolve().parent / "client"
FILES = {
    "pushq-sw.js": "text/javascript",
    "pushq-subscribe.js": "text/javascript",
    "subscribe.html": "text/html",
    "subscribe-page.js": "text/javascript",
}
# The page loads its own scripts only and talks to this origin only (the API it is served by).
_PAGE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'; "
             "worker-src 'self'; manifest-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


@bp.get("/<name>")
def client_file(name: str) -> Response:
    """One file of the kit; anything else is 404."""
    mimetype = FILES.get(name)
    if mimetype is None:
        abort(404)
    content = (CLIENT_DIR / name).read_bytes()  # a few kB: read whole, no file handle left to the server
    response = Response(content, mimetype=mimetype)
    response.set_etag(hashlib.sha256(content).hexdigest()[:32])
    response.make_conditional(request)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if name == "pushq-sw.js":
        response.headers["Service-Worker-Allowed"] = "/"
    if mimetype == "text/html":
        response.headers["Content-Security-Policy"] = _PAGE_CSP
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
