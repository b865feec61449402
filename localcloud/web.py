"""Small HTTP plumbing on top of the standard library's http.server.

``Router`` maps (method, path template) to a handler; a template such as
``/servers/{id}`` is also the key API calls are counted under.  ``serve()``
wraps a ``ThreadingHTTPServer`` whose request handler turns every request into
a ``Request`` and hands it to one ``dispatch(request) -> Response`` callable.
Connections are closed after each answer (HTTP/1.0 semantics), so closing the
listener really makes a cloud unreachable.
"""

import json
import logging
import re
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = logging.getLogger(__name__)

#: Seconds a connection may stay idle before the handler gives up on it.
HANDLER_TIMEOUT = 30
#: Connections the kernel queues for a listener before it drops new ones.
LISTEN_BACKLOG = 128


class Request:
    def __init__(self, method, raw_path, headers, body):
        self.method = method
        parsed = urllib.parse.urlsplit(raw_path)
        self.path = urllib.parse.unquote(parsed.path)
        self.query_string = parsed.query
        self.query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        self.headers = headers
        self.body = body
        self.params = {}          # filled by the router
        self.template = None      # the matched route template

    def arg(self, name, default=None):
        values = self.query.get(name)
        return values[-1] if values else default

    def args(self, name):
        return self.query.get(name, [])

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        """The JSON body, or None when there is none; ValueError if invalid."""
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))


class Response:
    def __init__(self, status, body=b"", content_type=None, headers=None):
        self.status = status
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.body = body
        self.headers = dict(headers or {})
        if content_type:
            self.headers["Content-Type"] = content_type


def json_response(status, obj, headers=None):
    return Response(status, json.dumps(obj).encode("utf-8"),
                    "application/json", headers)


def public(func):
    """Mark a handler that answers without a token (version documents)."""
    func.public = True
    return func


def require_token(cloud, request):
    """Every service's 401 unless the request carries a valid, scoped token."""
    from localcloud.state import ApiError
    token = cloud.state.check_token(request.header("X-Auth-Token"))
    if token is None or not token.scoped:
        raise ApiError(401, "The request you have made requires authentication.")


class NoRoute(Exception):
    def __init__(self, allowed=()):
        super().__init__("no route")
        self.allowed = allowed


class Router:
    def __init__(self):
        self._routes = []

    def add(self, method, template, handler):
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)",
                               re.escape(template)) + "/?$"
        self._routes.append((method, template, re.compile(pattern), handler))

    def route(self, method, template):
        def decorator(func):
            self.add(method, template, func)
            return func
        return decorator

    def match(self, method, path):
        """(handler, params, template); NoRoute (with the allowed methods when
        the path exists) otherwise."""
        allowed = []
        for route_method, template, pattern, handler in self._routes:
            m = pattern.match(path)
            if m:
                if route_method == method:
                    return handler, m.groupdict(), template
                allowed.append(route_method)
        raise NoRoute(allowed)


_ID_SEGMENT = re.compile(r"^([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                         r"[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}|\d+)$")


def generic_template(path):
    """A counting key for paths no route matched: ids become {id}."""
    return "/".join("{id}" if _ID_SEGMENT.match(seg) else seg
                    for seg in path.split("/"))


class _Handler(BaseHTTPRequestHandler):
    server_version = "localcloud"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    timeout = HANDLER_TIMEOUT

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, self.headers, body)
        try:
            response = self.server.dispatch(request)
        except Exception:
            LOG.exception("%s %s failed", self.command, request.path)
            response = Response(500, "Internal error in localcloud\n",
                                "text/plain")
        self.send_response(response.status)
        headers = dict(response.headers)
        headers["Content-Length"] = str(len(response.body))
        headers.setdefault("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    def log_message(self, format, *args):     # never log tokens or bodies
        LOG.debug("%s %s", self.address_string(), format % args)


class HTTPServer(ThreadingHTTPServer):
    """One listener; ``dispatch`` handles every request.  Handler threads are
    joined on close, so a stopped server leaves no threads."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a sixth simultaneous connect
    # is dropped and the client's SYN retried a second later, which would
    # serialize parallel clients.  Let the kernel queue a burst instead.
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, dispatch):
        self.dispatch = dispatch
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        """A client that hung up before its answer was written (it timed out) is
        the client's business: a debug line, not a traceback on stderr."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            LOG.debug("%s hung up before its answer", client_address[0])
            return
        super().handle_error(request, client_address)


class ListenError(OSError):
    """A port that cannot be bound; the message names who wanted it."""

    def __str__(self):
        return self.strerror


class Listener:
    """A started HTTPServer plus its serving thread."""

    def __init__(self, host, port, dispatch, name):
        self.server = HTTPServer((host, port), dispatch)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1},
                                       name=name, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.thread.join()
        self.server.server_close()

