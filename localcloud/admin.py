"""The admin HTTP endpoint of a localcloud process (its own port, loopback).

    GET  /clouds                         every cloud: API port, auth URL, ...
    GET  /clouds/<name>                  one of them
    GET  /clouds/<name>/faults           all knobs (JSON)
    PUT  /clouds/<name>/faults           merge the given knobs; answers all
    GET  /clouds/<name>/stats            API calls by "METHOD /path/{template}"
    GET  /clouds/<name>/stats/spans      {"limit": N, "spans": {key: [[start,
                                         end], ...]}}: wall-clock times of the
                                         newest N calls per key, in start
                                         order; ?key=<key> for one key only
    POST /clouds/<name>/stats/reset      counters and spans
    GET  /clouds/<name>/servers          every server, lingering and deleted too
    POST /clouds/<name>/servers/<id>/die the server stops answering SSH now
                                         (as node-death does); answers its
                                         entry; 404 unknown, 409 not ACTIVE
                                         or not answering SSH anyway
    GET  /clouds/<name>/images
    POST /clouds/<name>/revoke-tokens    the next API call with an old token
                                         gets 401

Errors are ``{"error": "<message>"}`` with 400 (bad knob), 404, 405 or 409.
Nothing here ever shows a password or a token.
"""

from localcloud.faults import FaultError
from localcloud.state import ApiError
from localcloud.web import (ListenError, Listener, NoRoute, Router,
                            json_response)

router = Router()


def _cloud(local, request):
    name = request.params["name"]
    try:
        return local.clouds[name]
    except KeyError:
        raise _AdminError(404, "no cloud named %r; clouds are %s"
                          % (name, ", ".join(sorted(local.clouds)))) from None


class _AdminError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


@router.route("GET", "/clouds")
def list_clouds(local, request):
    return {"clouds": {name: cloud.info()
                       for name, cloud in sorted(local.clouds.items())}}


@router.route("GET", "/clouds/{name}")
def get_cloud(local, request):
    return _cloud(local, request).info()


@router.route("GET", "/clouds/{name}/faults")
def get_faults(local, request):
    return _cloud(local, request).get_faults()


@router.route("PUT", "/clouds/{name}/faults")
def put_faults(local, request):
    cloud = _cloud(local, request)
    try:
        update = request.json()
    except ValueError as e:
        raise _AdminError(400, "body is not JSON: %s" % e) from None
    try:
        return cloud.set_faults(update or {})
    except FaultError as e:
        raise _AdminError(400, str(e)) from None


@router.route("GET", "/clouds/{name}/stats")
def get_stats(local, request):
    return _cloud(local, request).stats()


@router.route("GET", "/clouds/{name}/stats/spans")
def get_spans(local, request):
    return _cloud(local, request).spans_report(request.arg("key"))


@router.route("POST", "/clouds/{name}/stats/reset")
def reset_stats(local, request):
    cloud = _cloud(local, request)
    cloud.reset_stats()
    return cloud.stats()


@router.route("GET", "/clouds/{name}/servers")
def get_servers(local, request):
    return {"servers": _cloud(local, request).servers()}


@router.route("POST", "/clouds/{name}/servers/{id}/die")
def kill_node(local, request):
    cloud = _cloud(local, request)
    try:
        return cloud.kill_node(request.params["id"])
    except ApiError as e:
        raise _AdminError(e.status, e.message) from None


@router.route("GET", "/clouds/{name}/images")
def get_images(local, request):
    return {"images": _cloud(local, request).images()}


@router.route("POST", "/clouds/{name}/revoke-tokens")
def revoke_tokens(local, request):
    return {"revoked": _cloud(local, request).revoke_tokens()}


class AdminServer:
    def __init__(self, local, port=0):
        self.local = local
        try:
            self._listener = Listener("127.0.0.1", port, self.dispatch,
                                      "localcloud-admin")
        except OSError as e:
            raise ListenError(e.errno, "admin endpoint: cannot listen on "
                          "127.0.0.1:%d: %s" % (port, e.strerror)) from None
        self.port = self._listener.port
        self.url = "http://127.0.0.1:%d" % self.port

    def dispatch(self, request):
        try:
            handler, request.params, _ = router.match(request.method,
                                                      request.path)
        except NoRoute as e:
            if e.allowed:
                return json_response(405, {"error": "method %s not allowed; "
                                           "use %s" % (request.method,
                                                       ", ".join(e.allowed))})
            return json_response(404, {"error": "no such admin resource: %s"
                                       % request.path})
        try:
            return json_response(200, handler(self.local, request))
        except _AdminError as e:
            return json_response(e.status, {"error": str(e)})

    def close(self):
        self._listener.close()

