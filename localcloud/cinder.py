"""Cinder (block storage v3) under /volume: version documents with the
microversion range, absolute limits, and the read-only calls clients make
on the way there (volumes, snapshots and backups, all empty; the volume
types; the availability zones).  localcloud stores no volumes, so nothing
here creates one.

Without a block-storage entry in the catalog, openstacksdk's
``get_volume_limits()`` raises ServiceDisabledException, and Nodepool's quota
check (``getQuotaLimits``: compute limits, then volume limits) fails every
request.  The catalog lists ``block-storage`` and ``volumev3`` at
``/volume/v3/{project_id}`` as devstack does; keystoneauth strips the
project id for version discovery and appends it again to the versioned URL.
Routes answer with and without the project id in the path (cinder accepts
both since 3.67).

Shapes follow cinder's api-ref samples (versions/versions-response.json,
versions/version-show-response.json, limits-show-response.json,
volumes-list-response.json, volume-types-list-response.json) and
cinder/api/versions.py (``GET /`` answers 300, ``GET /v3/`` 200); errors are
cinder's ``{"<faultName>": {"code": N, "message": ...}}``.
"""

import re
import uuid

from localcloud.state import ApiError
from localcloud.web import Router, json_response, public, require_token

PREFIX = "/volume"
MIN_VERSION = (3, 0)
#: Highest microversion served (cinder 2024.1 and later).
MAX_VERSION = (3, 71)
VERSION_UPDATED = "2023-08-31T00:00:00Z"
FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden",
               404: "itemNotFound", 405: "badMethod", 406: "notAcceptable",
               409: "conflictingRequest", 413: "overLimit", 429: "overLimit",
               501: "notImplemented", 503: "serviceUnavailable"}
VERSION_RE = re.compile(r"^([1-9]\d*)\.(0|[1-9]\d*)$")
#: Absolute limits: devstack's default cinder quotas; nothing is ever used.
ABSOLUTE_LIMITS = {
    "maxTotalVolumes": 10, "maxTotalVolumeGigabytes": 1000,
    "maxTotalSnapshots": 10, "maxTotalBackups": 10,
    "maxTotalBackupGigabytes": 1000,
    "totalVolumesUsed": 0, "totalGigabytesUsed": 0,
    "totalSnapshotsUsed": 0, "totalBackupsUsed": 0,
    "totalBackupGigabytesUsed": 0,
}
DEFAULT_TYPE = "__DEFAULT__"

router = Router()


def vstr(version):
    return "%d.%d" % version


def catalog_url(cloud):
    """What the catalog lists for block-storage and volumev3."""
    return "%s%s/v3/%s" % (cloud.base_url, PREFIX, cloud.state.project_id)


def route(method, template):
    """Register a v3 handler both under /v3/{project_id}/... and /v3/..."""
    def decorator(func):
        router.add(method, "/v3/{project_id}" + template, func)
        router.add(method, "/v3" + template, func)
        return func
    return decorator


# -- microversions, auth and errors ----------------------------------------------


def requested_version(request):
    """The microversion asked for (3.0 when none), or ApiError 400/406."""
    value = None
    combined = request.header("OpenStack-API-Version")
    if combined:
        for part in combined.split(","):
            service, _, version = part.strip().partition(" ")
            if service.lower() in ("volume", "block-storage"):
                value = version.strip()
    if value is None:
        return MIN_VERSION
    if value.lower() == "latest":
        return MAX_VERSION
    m = VERSION_RE.match(value)
    if not m:
        raise ApiError(400, "Invalid API version request string %s." % value)
    version = (int(m.group(1)), int(m.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ApiError(406, "API Version %s is not supported by the API. "
                       "Minimum is %s and maximum is %s."
                       % (value, vstr(MIN_VERSION), vstr(MAX_VERSION)))
    return version


def version_headers(version):
    return {"OpenStack-API-Version": "volume %s" % vstr(version),
            "Vary": "OpenStack-API-Version"}


def handle(cloud, request, handler):
    if getattr(handler, "public", False):
        return handler(cloud, request)
    require_token(cloud, request)
    project_id = request.params.get("project_id")
    if project_id is not None and project_id != cloud.state.project_id:
        raise ApiError(400, "Malformed request url")
    request.microversion = requested_version(request)
    response = handler(cloud, request)
    response.headers.update(version_headers(request.microversion))
    return response


def render_error(cloud, request, status, message, headers=None):
    headers = dict(headers or {})
    if status == 401:
        # keystonemiddleware answers before cinder sees the request
        return json_response(401, {"error": {
            "code": 401, "title": "Unauthorized", "message": message}},
            headers)
    version = getattr(request, "microversion", None)
    if version is not None:
        headers.update(version_headers(version))
    return json_response(status, {FAULT_NAMES.get(status, "computeFault"): {
        "code": status, "message": message}}, headers)


def injected_message(status):
    if status == 429:
        return "This request was rate-limited."
    return ("The server has either erred or is incapable of performing the "
            "requested operation.")


# -- versions ---------------------------------------------------------------------


def _v3(cloud):
    return {
        "id": "v3.0", "status": "CURRENT",
        "version": vstr(MAX_VERSION), "min_version": vstr(MIN_VERSION),
        "updated": VERSION_UPDATED,
        "links": [{"rel": "describedby", "type": "text/html",
                   "href": "https://docs.openstack.org/"},
                  {"rel": "self",
                   "href": "%s%s/v3/" % (cloud.base_url, PREFIX)}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;"
                                 "version=3"}],
    }


@router.route("GET", "")
@public
def versions(cloud, request):
    # cinder's VersionsController.all: 300 Multiple Choices
    return json_response(300, {"versions": [_v3(cloud)]})


@router.route("GET", "/v3")
@public
def version(cloud, request):
    # cinder's VersionsController.index: the same list, 200
    return json_response(200, {"versions": [_v3(cloud)]})


# -- limits -----------------------------------------------------------------------


@route("GET", "/limits")
def limits(cloud, request):
    return json_response(200, {"limits": {"rate": [],
                                          "absolute": dict(ABSOLUTE_LIMITS)}})


# -- volumes, snapshots, backups: there are none ----------------------------------


def _empty(key):
    def handler(cloud, request):
        return json_response(200, {key: []})
    return handler


def _missing(what):
    def handler(cloud, request):
        raise ApiError(404, "%s %s could not be found."
                       % (what, request.params["id"]))
    return handler


for _collection, _what in (("volumes", "Volume"), ("snapshots", "Snapshot"),
                           ("backups", "Backup")):
    route("GET", "/" + _collection)(_empty(_collection))
    route("GET", "/%s/detail" % _collection)(_empty(_collection))
    route("GET", "/%s/{id}" % _collection)(_missing(_what))


# -- volume types and availability zones ------------------------------------------


def _type_view(cloud):
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, cloud.base_url +
                                 "/volume-type/" + DEFAULT_TYPE)),
            "name": DEFAULT_TYPE, "description": "Default Volume Type",
            "is_public": True, "os-volume-type-access:is_public": True,
            "qos_specs_id": None, "extra_specs": {}}


@route("GET", "/types")
def list_types(cloud, request):
    return json_response(200, {"volume_types": [_type_view(cloud)]})


@route("GET", "/types/default")
def default_type(cloud, request):
    return json_response(200, {"volume_type": _type_view(cloud)})


@route("GET", "/types/{id}")
def show_type(cloud, request):
    view = _type_view(cloud)
    if request.params["id"] not in (view["id"], view["name"]):
        raise ApiError(404, "Volume type %s could not be found."
                       % request.params["id"])
    return json_response(200, {"volume_type": view})


@route("GET", "/os-availability-zone")
def availability_zones(cloud, request):
    return json_response(200, {"availabilityZoneInfo": [
        {"zoneName": "nova", "zoneState": {"available": True}}]})
