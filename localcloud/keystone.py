"""Keystone v3 under /identity: version discovery, password (and token) auth
returning a token with a service catalog, token validation.

Shapes follow keystone's api-ref samples (auth-password-project-scoped-
response.json, identity-versions-response.json); errors are keystone's
``{"error": {"code", "message", "title"}}``.
"""

import time
import uuid

from localcloud import cinder, neutron
from localcloud.state import ApiError
from localcloud.web import Router, json_response

PREFIX = "/identity"
VERSION_UPDATED = "2020-04-07T00:00:00Z"
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
          404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
          500: "Internal Server Error"}
UNAUTHORIZED = "The request you have made requires authentication."

router = Router()


def error_response(status, message, headers=None):
    body = {"error": {"code": status, "message": message,
                      "title": TITLES.get(status, "Error")}}
    return json_response(status, body, headers)


def _version(cloud):
    return {
        "id": "v3.14", "status": "stable", "updated": VERSION_UPDATED,
        "links": [{"rel": "self",
                   "href": "%s%s/v3/" % (cloud.base_url, PREFIX)}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.identity-v3+json"}],
    }


@router.route("GET", "")
def versions(cloud, request):
    # Real keystone answers 300 Multiple Choices here.
    return json_response(300, {"versions": {"values": [_version(cloud)]}})


@router.route("GET", "/v3")
def version(cloud, request):
    return json_response(200, {"version": _version(cloud)})


def catalog(cloud):
    def service(kind, name, url, key=None):
        key = key or url        # ids: stable, unique per entry
        return {"type": kind, "name": name,
                "id": uuid.uuid5(uuid.NAMESPACE_URL, key).hex,
                "endpoints": [{"id": uuid.uuid5(uuid.NAMESPACE_URL,
                                                key + iface).hex,
                               "interface": iface,
                               "region": cloud.config.region,
                               "region_id": cloud.config.region,
                               "url": url}
                              for iface in ("public", "internal", "admin")]}
    base = cloud.base_url
    entries = [service("identity", "keystone", base + PREFIX),
               service("compute", "nova", base + "/compute/v2.1"),
               service("image", "glance", base + "/image")]
    if cloud.config.block_storage:
        # as devstack registers cinder: both types, the same URL
        volume = cinder.catalog_url(cloud)
        entries += [service("block-storage", "cinder", volume),
                    service("volumev3", "cinderv3", volume,
                            key=volume + "#volumev3")]
    if cloud.config.network_service:
        entries.append(service("network", "neutron",
                               neutron.catalog_url(cloud)))
    return entries


def _iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + \
        ".%06dZ" % int((ts % 1) * 1e6)


def token_body(cloud, token, methods, include_catalog=True):
    state, config = cloud.state, cloud.config
    domain = {"id": state.domain_id, "name": config.domain}
    body = {
        "methods": methods,
        "expires_at": _iso(token.expires),
        "issued_at": _iso(token.issued),
        "audit_ids": [token.audit_id],
        "user": {"id": state.user_id, "name": config.username,
                 "domain": domain, "password_expires_at": None},
    }
    if token.scoped:
        body.update({
            "project": {"id": state.project_id, "name": config.project,
                        "domain": domain},
            "is_domain": False,
            "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_DNS, role).hex,
                       "name": role} for role in ("member", "reader")],
        })
        if include_catalog:
            body["catalog"] = catalog(cloud)
    return {"token": body}


def _domain_ok(cloud, domain):
    if domain is None:
        return False
    if not isinstance(domain, dict):
        raise ApiError(400, "Invalid domain: %r" % (domain,))
    return (domain.get("id") == cloud.state.domain_id
            or domain.get("name") == cloud.config.domain)


def _check_password(cloud, identity):
    password = identity.get("password")
    user = password.get("user") if isinstance(password, dict) else None
    if not isinstance(user, dict):
        raise ApiError(400, "Expecting to find user in password. The server "
                       "could not comply with the request since it is either "
                       "malformed or otherwise incorrect. The client is "
                       "assumed to be in error.")
    if "id" in user:
        known = user["id"] == cloud.state.user_id
    else:
        known = (user.get("name") == cloud.config.username
                 and _domain_ok(cloud, user.get("domain")))
    if not known or user.get("password") != cloud.config.password:
        raise ApiError(401, UNAUTHORIZED)


def _scoped(cloud, scope):
    """True for this cloud's project, False for unscoped; 401 otherwise."""
    if scope is None or scope == "unscoped":
        return False
    project = scope.get("project") if isinstance(scope, dict) else None
    if not isinstance(project, dict):
        raise ApiError(401, "localcloud only issues project-scoped or "
                       "unscoped tokens.")
    if "id" in project:
        if project["id"] == cloud.state.project_id:
            return True
    elif (project.get("name") == cloud.config.project
          and _domain_ok(cloud, project.get("domain"))):
        return True
    raise ApiError(401, UNAUTHORIZED)


@router.route("POST", "/v3/auth/tokens")
def issue(cloud, request):
    try:
        body = request.json()
    except ValueError:
        raise ApiError(400, "Malformed JSON in request body.") from None
    auth = body.get("auth") if isinstance(body, dict) else None
    identity = auth.get("identity") if isinstance(auth, dict) else None
    if not isinstance(identity, dict) or not identity.get("methods"):
        raise ApiError(400, "Expecting to find identity in auth. The server "
                       "could not comply with the request since it is either "
                       "malformed or otherwise incorrect. The client is "
                       "assumed to be in error.")
    methods = identity["methods"]
    if "password" in methods:
        _check_password(cloud, identity)
    elif "token" in methods:
        given = identity.get("token") or {}
        if cloud.state.check_token(given.get("id")) is None:
            raise ApiError(401, UNAUTHORIZED)
    else:
        raise ApiError(401, "Unsupported authentication method: %s"
                       % ", ".join(map(str, methods)))
    scoped = _scoped(cloud, auth.get("scope"))
    token = cloud.state.issue_token(scoped)
    include_catalog = "nocatalog" not in request.query
    return json_response(201, token_body(cloud, token, methods, include_catalog),
                         {"X-Subject-Token": token.id,
                          "Vary": "X-Auth-Token"})


@router.route("GET", "/v3/auth/tokens")
def validate(cloud, request):
    if cloud.state.check_token(request.header("X-Auth-Token")) is None:
        raise ApiError(401, UNAUTHORIZED)
    subject = request.header("X-Subject-Token")
    token = cloud.state.check_token(subject)
    if token is None:
        raise ApiError(404, "Could not find token: %s" % subject)
    return json_response(200, token_body(cloud, token, ["password"],
                                         "nocatalog" not in request.query),
                         {"X-Subject-Token": token.id, "Vary": "X-Auth-Token"})


def injected_message(status):
    if status == 429:
        return "This request was rate-limited."
    return ("An unexpected error prevented the server from fulfilling your "
            "request.")


def handle(cloud, request, handler):
    return handler(cloud, request)


def render_error(cloud, request, status, message, headers=None):
    return error_response(status, message, headers)
