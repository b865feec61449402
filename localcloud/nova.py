"""Nova v2.1 under /compute: servers (create, list with filters and paging,
show, delete, createImage and os-getConsoleOutput actions), flavors, keypairs,
limits, availability zones, the floating IP proxies (below 2.36), version
documents and microversions 2.1 .. MAX_VERSION.

Shapes follow nova's doc/api_samples (servers-details-resp.json and its
v2.47/v2.96 variants, flavors-detail-resp.json and v2.75, os-keypairs/*,
limits/v2.36, os-availability-zone/*, os-floating-ip-pools/*,
os-floating-ips/*) and the view builders in nova/api/openstack/compute/views;
errors are nova's ``{"<faultName>": {"code": N, "message": ...}}``.
"""

import base64
import binascii
import re
import time
from urllib.parse import urlencode

from localcloud import nonsense
from localcloud.state import ApiError, iso
from localcloud.web import Response, Router, json_response, public, require_token

PREFIX = "/compute"
MIN_VERSION = (2, 1)
#: Highest microversion served; also python-novaclient 18's API_MAX_VERSION.
MAX_VERSION = (2, 96)
FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden",
               404: "itemNotFound", 405: "badMethod", 409: "conflictingRequest",
               413: "overLimit", 415: "badMediaType", 429: "overLimit",
               501: "notImplemented", 503: "serviceUnavailable"}
STATUSES = ("BUILD", "ACTIVE", "ERROR", "DELETED", "SHUTOFF", "REBOOT",
            "HARD_REBOOT", "REBUILD", "RESIZE", "VERIFY_RESIZE", "PAUSED",
            "SUSPENDED", "RESCUE", "SOFT_DELETED", "SHELVED",
            "SHELVED_OFFLOADED", "MIGRATING", "PASSWORD", "UNKNOWN")
#: The one availability zone (every server's OS-EXT-AZ:availability_zone).
ZONE = "nova"
#: The floating IP pool the nova-network proxy APIs name (no floating IP is
#: ever allocated from it here).
FLOATING_IP_POOL = "public"
KEYPAIR_NAME = re.compile(r"^[a-zA-Z0-9 _-]+$")
KEYPAIR_NAME_292 = re.compile(r"^[a-zA-Z0-9 _.@-]+$")
VERSION_RE = re.compile(r"^([1-9]\d*)\.(0|[1-9]\d*)$")

router = Router()


def vstr(version):
    return "%d.%d" % version


# -- microversions and errors ----------------------------------------------------


def requested_version(request):
    """The microversion asked for (2.1 when none), or ApiError 400/406."""
    value = None
    combined = request.header("OpenStack-API-Version")
    if combined:
        for part in combined.split(","):
            service, _, version = part.strip().partition(" ")
            if service.lower() == "compute":
                value = version.strip()
    if value is None:
        value = request.header("X-OpenStack-Nova-API-Version")
    if value is None:
        return MIN_VERSION
    if value.strip().lower() == "latest":
        return MAX_VERSION
    m = VERSION_RE.match(value.strip())
    if not m:
        raise ApiError(400, "API Version String %s is of invalid format. Must "
                       "be of format MajorNum.MinorNum." % value)
    version = (int(m.group(1)), int(m.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ApiError(406, "Version %s is not supported by the API. Minimum "
                       "is %s and maximum is %s." % (value, vstr(MIN_VERSION),
                                                     vstr(MAX_VERSION)))
    return version


def version_headers(version):
    return {"OpenStack-API-Version": "compute %s" % vstr(version),
            "X-OpenStack-Nova-API-Version": vstr(version),
            "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}


def render_error(cloud, request, status, message, headers=None):
    fault = {"code": status, "message": message}
    headers = dict(headers or {})
    if status == 401:
        # keystonemiddleware answers before nova sees the request
        return json_response(401, {"error": {
            "code": 401, "title": "Unauthorized", "message": message}}, headers)
    if status in (413, 429) and "Retry-After" in headers:
        fault["retryAfter"] = headers["Retry-After"]
    version = getattr(request, "microversion", None)
    if version is not None:
        headers.update(version_headers(version))
    return json_response(status, {FAULT_NAMES.get(status, "computeFault"):
                                  fault}, headers)


def handle(cloud, request, handler):
    if getattr(handler, "public", False):
        return handler(cloud, request)
    require_token(cloud, request)
    request.microversion = requested_version(request)
    response = handler(cloud, request)
    response.headers.update(version_headers(request.microversion))
    return response


def body_of(request, key):
    try:
        body = request.json()
    except ValueError:
        raise ApiError(400, "Malformed request body") from None
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        raise ApiError(400, "Invalid input for field/attribute %s. Value: %s. "
                       "'%s' is a required property" % (key, body, key))
    return body[key]


def links(cloud, kind, ident):
    base = cloud.base_url + PREFIX
    return [{"rel": "self", "href": "%s/v2.1/%s/%s" % (base, kind, ident)},
            {"rel": "bookmark", "href": "%s/%s/%s" % (base, kind, ident)}]


def at_least(request, minor):
    return request.microversion >= (2, minor)


def int_arg(request, name, minimum=0):
    value = request.arg(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, "%s param must be an integer" % name) from None
    if number < minimum:
        raise ApiError(400, "%s param must be positive" % name)
    return number


# -- versions ---------------------------------------------------------------------


def _v21(cloud):
    return {
        "id": "v2.1", "status": "CURRENT", "version": vstr(MAX_VERSION),
        "min_version": vstr(MIN_VERSION), "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": cloud.base_url + PREFIX + "/v2.1/"},
                  {"rel": "describedby", "type": "text/html",
                   "href": "http://docs.openstack.org/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.compute+json;"
                                 "version=2.1"}],
    }


@router.route("GET", "")
@public
def versions(cloud, request):
    v2 = {"id": "v2.0", "status": "DEPRECATED", "version": "",
          "min_version": "", "updated": "2025-07-04T12:00:00Z",
          "links": [{"rel": "self", "href": cloud.base_url + PREFIX + "/v2/"}]}
    v21 = _v21(cloud)
    del v21["media-types"]
    v21["links"] = v21["links"][:1]
    return json_response(200, {"versions": [v2, v21]})


@router.route("GET", "/v2.1")
@public
def version(cloud, request):
    return json_response(200, {"version": _v21(cloud)})


# -- servers ----------------------------------------------------------------------


def flavor_view(cloud, request, flavor, detail=True):
    view = {"id": flavor.id, "name": flavor.name,
            "links": links(cloud, "flavors", flavor.id)}
    if detail:
        view.update({
            "ram": flavor.ram, "vcpus": flavor.vcpus, "disk": flavor.disk,
            # No swap is "" before 2.75 and 0 from 2.75 on.
            "swap": flavor.swap if at_least(request, 75)
            else flavor.swap or "",
            "OS-FLV-EXT-DATA:ephemeral": flavor.ephemeral,
            "OS-FLV-DISABLED:disabled": False,
            "os-flavor-access:is_public": True,
            "rxtx_factor": 1.0,
        })
    if at_least(request, 55):
        view["description"] = flavor.description
    if detail and at_least(request, 61):
        view["extra_specs"] = dict(flavor.extra_specs)
    return view


def server_view(cloud, request, s, show=False):
    config = cloud.config
    addresses = {}
    if s["address"]:
        entry = {"version": 4, "addr": s["address"],
                 "OS-EXT-IPS:type": "fixed",
                 "OS-EXT-IPS-MAC:mac_addr": s["mac"]}
        addresses[config.network_name] = [entry]
        # Floating IPs the network service attached to the server's port.
        addresses[config.network_name] += [
            dict(entry, **{"addr": fip, "OS-EXT-IPS:type": "floating"})
            for fip in s.get("floating_addresses", ())]
        if config.floating_ips:
            addresses[config.network_name].append(
                dict(entry, **{"OS-EXT-IPS:type": "floating"}))
    flavor = s["flavor"]
    if at_least(request, 47):
        flavor_part = {"vcpus": flavor.vcpus, "ram": flavor.ram,
                       "disk": flavor.disk, "ephemeral": flavor.ephemeral,
                       "swap": flavor.swap, "original_name": flavor.name,
                       "extra_specs": dict(flavor.extra_specs)}
    else:
        flavor_part = {"id": flavor.id,
                       "links": links(cloud, "flavors", flavor.id)[1:]}
    view = {
        "id": s["id"], "name": s["name"], "status": s["status"],
        "tenant_id": cloud.state.project_id, "user_id": cloud.state.user_id,
        "metadata": s["metadata"],
        "hostId": cloud.state.host_id if s["address"] else "",
        "image": {"id": s["image_id"],
                  "links": links(cloud, "images", s["image_id"])[1:]},
        "flavor": flavor_part,
        "created": iso(s["created"]), "updated": iso(s["updated"]),
        "addresses": addresses,
        "accessIPv4": "", "accessIPv6": "",
        "links": links(cloud, "servers", s["id"]),
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": ZONE,
        "config_drive": "",
        "key_name": s["key_name"],
        "OS-SRV-USG:launched_at": iso(s["launched_at"], micro=True)
        if s["launched_at"] else None,
        "OS-SRV-USG:terminated_at": None,
        "security_groups": [{"name": "default"}],
        "OS-EXT-STS:task_state": s["task_state"],
        "OS-EXT-STS:vm_state": s["vm_state"],
        "OS-EXT-STS:power_state": s["power_state"],
        "os-extended-volumes:volumes_attached": [],
    }
    if s["status"] in ("ACTIVE", "BUILD"):
        view["progress"] = 0
    if s["status"] in ("ERROR", "DELETED") and s["fault"]:
        view["fault"] = s["fault"]
    if at_least(request, 9):
        view["locked"] = False
    if at_least(request, 19):
        view["description"] = s["description"]
    if at_least(request, 26):
        view["tags"] = []
    if at_least(request, 63):
        view["trusted_image_certificates"] = None
    if show and at_least(request, 71):
        view["server_groups"] = []
    if at_least(request, 73):
        view["locked_reason"] = None
    if at_least(request, 90):
        view["OS-EXT-SRV-ATTR:hostname"] = s["name"]
    if at_least(request, 96):
        view["pinned_availability_zone"] = None
    return view


def _phantom_server(cloud, number, detail):
    """A made-up server of ``paging: endless``."""
    ident = nonsense.phantom_id(number)
    view = {"id": ident, "name": "phantom-%d" % number,
            "links": links(cloud, "servers", ident)}
    if detail:
        view.update({"status": "ACTIVE", "metadata": {}, "addresses": {},
                     "image": "", "created": "2012-01-01T00:00:00Z",
                     "updated": "2012-01-01T00:00:00Z",
                     "tenant_id": cloud.state.project_id,
                     "user_id": cloud.state.user_id})
    return view


def _list_servers(cloud, request, detail):
    max_limit = cloud.config.max_page_size
    limit = int_arg(request, "limit")
    limit = max_limit if limit is None else min(limit, max_limit)
    statuses = [v.upper() for v in request.args("status") if v]
    paging = cloud.state.faults["paging"]
    marker = request.arg("marker") or None
    if paging == "repeat-marker":
        marker = None                   # ignored: every page is the first
    phantom = nonsense.phantom_number(marker) if paging == "endless" else None
    if phantom is not None:             # past the real servers
        items = [_phantom_server(cloud, phantom + i, detail)
                 for i in range(1, limit + 1)]
    else:
        servers = cloud.state.list_servers(
            name=request.arg("name") or None, statuses=statuses or None,
            image=request.arg("image") or None,
            flavor=request.arg("flavor") or None,
            limit=limit, marker=marker)
        if detail:
            items = [server_view(cloud, request, s) for s in servers]
        else:
            items = [{"id": s["id"], "name": s["name"],
                      "links": links(cloud, "servers", s["id"])}
                     for s in servers]
        if paging == "endless":
            items += [_phantom_server(cloud, i, detail)
                      for i in range(1, limit - len(items) + 1)]
    body = {"servers": items}
    if items and len(items) == limit:
        params = [(k, v) for k, values in sorted(request.query.items())
                  if k not in ("limit", "marker") for v in values]
        params += [("limit", str(limit)), ("marker", items[-1]["id"])]
        body["servers_links"] = [{"rel": "next", "href": "%s%s/v2.1/servers%s?%s"
                                  % (cloud.base_url, PREFIX,
                                     "/detail" if detail else "",
                                     urlencode(params))}]
    return json_response(200, body)


@router.route("GET", "/v2.1/servers")
def list_servers(cloud, request):
    return _list_servers(cloud, request, detail=False)


@router.route("GET", "/v2.1/servers/detail")
def list_servers_detail(cloud, request):
    return _list_servers(cloud, request, detail=True)


def _ref(value, field):
    if not isinstance(value, str) or not value:
        raise ApiError(400, "Invalid input for field/attribute %s. Value: %s. "
                       "%r is not of type 'string'" % (field, value, value))
    return value.rstrip("/").rsplit("/", 1)[-1]


@router.route("POST", "/v2.1/servers")
def create_server(cloud, request):
    server = body_of(request, "server")
    name = server.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ApiError(400, "Invalid input for field/attribute name. Value: "
                       "%s. %r is not a valid server name" % (name, name))
    if "imageRef" not in server:
        raise ApiError(400, "Missing imageRef attribute")
    image_id = _ref(server["imageRef"], "imageRef")
    if "flavorRef" not in server:
        raise ApiError(400, "Invalid input for field/attribute server. Value: "
                       "%s. 'flavorRef' is a required property" % server)
    flavor_id = _ref(str(server["flavorRef"]), "flavorRef")
    networks = server.get("networks")
    if at_least(request, 37):
        if networks is None:
            raise ApiError(400, "Invalid input for field/attribute server. "
                           "Value: %s. 'networks' is a required property"
                           % server)
        if isinstance(networks, str) and networks not in ("auto", "none"):
            raise ApiError(400, "Invalid input for field/attribute networks. "
                           "Value: %s. %r is not one of ['auto', 'none']"
                           % (networks, networks))
    elif isinstance(networks, str):
        raise ApiError(400, "Invalid input for field/attribute networks. "
                       "Value: %s. %r is not of type 'array'"
                       % (networks, networks))
    if networks is not None and not isinstance(networks, (str, list)):
        raise ApiError(400, "Invalid input for field/attribute networks. "
                       "Value: %s." % (networks,))
    metadata = server.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255
            and len(v) <= 255 for k, v in metadata.items()):
        raise ApiError(400, "Invalid input for field/attribute metadata. "
                       "Value: %s." % (metadata,))
    key_name = server.get("key_name")
    if key_name is not None and not isinstance(key_name, str):
        raise ApiError(400, "Invalid key_name provided.")
    user_data = server.get("user_data")
    if user_data is not None:
        try:
            base64.b64decode(user_data, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ApiError(400, "User data needs to be valid base 64.") \
                from None
    zone = server.get("availability_zone")
    if zone not in (None, "", ZONE):
        raise ApiError(400, "The requested availability zone is not available")
    try:
        min_count = int(server.get("min_count", 1))
        max_count = int(server.get("max_count", min_count))
    except (TypeError, ValueError):
        raise ApiError(400, "Invalid input for field/attribute min_count.") \
            from None
    if min_count < 1 or max_count < 1:
        raise ApiError(400, "min_count and max_count must be >= 1")
    if min_count > max_count:
        raise ApiError(400, "min_count must be <= max_count")
    servers = cloud.state.create_servers(name, image_id, flavor_id, key_name,
                                         metadata, min_count, max_count)
    first = cloud.state.get_server(servers[0].id)
    body = {"id": first["id"], "links": links(cloud, "servers", first["id"]),
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}],
            "adminPass": first["admin_pass"]}
    return json_response(202, {"server": body},
                         {"Location": body["links"][0]["href"]})


@router.route("GET", "/v2.1/servers/{id}")
def show_server(cloud, request):
    server = cloud.state.get_server(request.params["id"])
    return json_response(200, {"server": server_view(cloud, request, server,
                                                     show=True)})


@router.route("DELETE", "/v2.1/servers/{id}")
def delete_server(cloud, request):
    cloud.state.delete_server(request.params["id"])
    return Response(204)


@router.route("POST", "/v2.1/servers/{id}/action")
def server_action(cloud, request):
    try:
        body = request.json()
    except ValueError:
        raise ApiError(400, "Malformed request body") from None
    if not isinstance(body, dict) or not body:
        raise ApiError(400, "Malformed request body")
    action = next(iter(body))
    server_id = request.params["id"]
    if action == "createImage":
        return _create_image(cloud, request, server_id, body[action])
    if action == "os-getConsoleOutput":
        args = body[action] if isinstance(body[action], dict) else {}
        length = args.get("length")
        if length is not None:
            try:
                length = int(length)
            except (TypeError, ValueError):
                raise ApiError(400, "Invalid input for field/attribute length."
                               ) from None
        output = cloud.state.console_output(server_id, length)
        return json_response(200, {"output": output})
    cloud.state.get_server(server_id)       # 404 first, as nova does
    raise ApiError(400, "There is no such action: %s" % action)


def _create_image(cloud, request, server_id, args):
    if not isinstance(args, dict):
        raise ApiError(400, "Invalid input for field/attribute createImage.")
    name = args.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ApiError(400, "Invalid input for field/attribute name. Value: "
                       "%s. %r is not of type 'string'" % (name, name))
    metadata = args.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in metadata.items()):
        raise ApiError(400, "Invalid input for field/attribute metadata. "
                       "Value: %s." % (metadata,))
    image_id = cloud.state.create_snapshot(server_id, name, metadata)
    if at_least(request, 45):
        return json_response(202, {"image_id": image_id})
    return Response(202, headers={
        "Location": "%s%s/v2.1/images/%s" % (cloud.base_url, PREFIX, image_id)})


# -- flavors ----------------------------------------------------------------------


def _flavors(cloud, request, detail):
    flavors = sorted(cloud.state.flavors.values(),
                     key=lambda f: (len(f.id), f.id))
    min_ram = int_arg(request, "minRam")
    min_disk = int_arg(request, "minDisk")
    if min_ram is not None:
        flavors = [f for f in flavors if f.ram >= min_ram]
    if min_disk is not None:
        flavors = [f for f in flavors if f.disk >= min_disk]
    if request.arg("is_public", "true").lower() in ("false", "0", "no"):
        flavors = []        # every flavor here is public
    marker = request.arg("marker")
    if marker is not None:
        ids = [f.id for f in flavors]
        if marker not in ids:
            raise ApiError(400, "marker [%s] not found" % marker)
        flavors = flavors[ids.index(marker) + 1:]
    limit = int_arg(request, "limit")
    if limit is not None:
        flavors = flavors[:min(limit, cloud.config.max_page_size)]
    return json_response(200, {"flavors": [flavor_view(cloud, request, f,
                                                       detail)
                                           for f in flavors]})


@router.route("GET", "/v2.1/flavors")
def list_flavors(cloud, request):
    return _flavors(cloud, request, detail=False)


@router.route("GET", "/v2.1/flavors/detail")
def list_flavors_detail(cloud, request):
    return _flavors(cloud, request, detail=True)


@router.route("GET", "/v2.1/flavors/{id}")
def show_flavor(cloud, request):
    flavor = cloud.state.get_flavor(request.params["id"])
    return json_response(200, {"flavor": flavor_view(cloud, request, flavor)})


@router.route("GET", "/v2.1/flavors/{id}/os-extra_specs")
def flavor_extra_specs(cloud, request):
    """None of our flavors has extra specs (openstacksdk's get_flavor asks)."""
    cloud.state.get_flavor(request.params["id"])        # 404 for an unknown flavor
    return json_response(200, {"extra_specs": {}})


# -- keypairs ---------------------------------------------------------------------


def keypair_view(cloud, request, keypair, full=False):
    view = {"name": keypair.name, "public_key": keypair.public_key,
            "fingerprint": keypair.fingerprint}
    if at_least(request, 2):
        view["type"] = keypair.type
    if full:
        view.update({"user_id": cloud.state.user_id,
                     "created_at": iso(keypair.created, micro=True),
                     "deleted": False, "deleted_at": None, "id": keypair.id,
                     "updated_at": None})
    return view


@router.route("POST", "/v2.1/os-keypairs")
def create_keypair(cloud, request):
    args = body_of(request, "keypair")
    name = args.get("name")
    pattern = KEYPAIR_NAME_292 if at_least(request, 92) else KEYPAIR_NAME
    if not isinstance(name, str) or not 0 < len(name) <= 255 \
            or not pattern.match(name):
        raise ApiError(400, "Invalid input for field/attribute name. Value: "
                       "%s. %r does not match %r" % (name, name,
                                                     pattern.pattern))
    key_type = "ssh"
    if at_least(request, 2):
        key_type = args.get("type", "ssh")
        if key_type not in ("ssh", "x509"):
            raise ApiError(400, "Invalid input for field/attribute type. "
                           "Value: %s. %r is not one of ['ssh', 'x509']"
                           % (key_type, key_type))
        if key_type == "x509":
            raise ApiError(400, "Keypair data is invalid: localcloud only "
                           "supports ssh keypairs")
    public_key = args.get("public_key")
    if at_least(request, 92) and not public_key:
        raise ApiError(400, "Invalid input for field/attribute keypair. "
                       "Value: %s. 'public_key' is a required property"
                       % args)
    if public_key is not None and not isinstance(public_key, str):
        raise ApiError(400, "Keypair data is invalid: failed to generate "
                       "fingerprint")
    keypair, private_key = cloud.state.create_keypair(name, public_key or None,
                                                      key_type)
    view = keypair_view(cloud, request, keypair)
    view["user_id"] = cloud.state.user_id
    if private_key is not None:
        view["private_key"] = private_key
    return json_response(201 if at_least(request, 2) else 200,
                         {"keypair": view})


@router.route("GET", "/v2.1/os-keypairs")
def list_keypairs(cloud, request):
    keypairs = cloud.state.list_keypairs()
    body = {}
    if at_least(request, 35):
        marker = request.arg("marker")
        if marker is not None:
            names = [k.name for k in keypairs]
            if marker not in names:
                raise ApiError(400, "marker [%s] not found" % marker)
            keypairs = keypairs[names.index(marker) + 1:]
        limit = int_arg(request, "limit")
        if limit is not None:
            keypairs = keypairs[:limit]
            if keypairs and len(keypairs) == limit:
                body["keypairs_links"] = [{
                    "rel": "next",
                    "href": "%s%s/v2.1/os-keypairs?limit=%d&marker=%s"
                            % (cloud.base_url, PREFIX, limit,
                               keypairs[-1].name)}]
    body["keypairs"] = [{"keypair": keypair_view(cloud, request, k)}
                        for k in keypairs]
    return json_response(200, body)


@router.route("GET", "/v2.1/os-keypairs/{name}")
def show_keypair(cloud, request):
    keypair = cloud.state.get_keypair(request.params["name"])
    return json_response(200, {"keypair": keypair_view(cloud, request, keypair,
                                                       full=True)})


@router.route("DELETE", "/v2.1/os-keypairs/{name}")
def delete_keypair(cloud, request):
    cloud.state.delete_keypair(request.params["name"])
    return Response(204 if at_least(request, 2) else 202)


# -- limits -----------------------------------------------------------------------


@router.route("GET", "/v2.1/limits")
def limits(cloud, request):
    quota = cloud.state.get_faults()["quota"]
    used = cloud.state.usage()

    def limit(name):
        return -1 if quota[name] is None else quota[name]

    absolute = {
        "maxServerMeta": 128,
        "maxTotalCores": limit("cores"), "maxTotalInstances": limit("instances"),
        "maxTotalRAMSize": limit("ram"), "maxTotalKeypairs": 100,
        "maxServerGroups": 10, "maxServerGroupMembers": 10,
        "totalCoresUsed": used["cores"], "totalInstancesUsed": used["instances"],
        "totalRAMUsed": used["ram"], "totalServerGroupsUsed": 0,
    }
    if not at_least(request, 39):       # the image-metadata proxy's limit
        absolute["maxImageMeta"] = 128
    if not at_least(request, 36):
        absolute.update({"maxSecurityGroupRules": 20, "maxSecurityGroups": 10,
                         "maxTotalFloatingIps": 10,
                         "totalSecurityGroupsUsed": 0,
                         "totalFloatingIpsUsed": 0})
    if not at_least(request, 57):
        absolute.update({"maxPersonality": 5, "maxPersonalitySize": 10240})
    return json_response(200, {"limits": {"rate": [], "absolute": absolute}})


# -- availability zones -----------------------------------------------------------


@router.route("GET", "/v2.1/os-availability-zone")
def list_availability_zones(cloud, request):
    # The internal zone (nova's own services) is left out, as nova does.
    return json_response(200, {"availabilityZoneInfo": [
        {"zoneName": ZONE, "zoneState": {"available": True},
         "hosts": None}]})


@router.route("GET", "/v2.1/os-availability-zone/detail")
def list_availability_zones_detail(cloud, request):
    # One host runs every service, as on devstack.  It is named after the
    # cloud: servers' hostId is sha224(project_id + host), as in nova.
    host = cloud.config.name
    heartbeat = iso(time.time(), micro=True)

    def services(*binaries):
        return {host: {binary: {"available": True, "active": True,
                                "updated_at": heartbeat}
                       for binary in binaries}}

    return json_response(200, {"availabilityZoneInfo": [
        {"zoneName": "internal", "zoneState": {"available": True},
         "hosts": services("nova-conductor", "nova-scheduler")},
        {"zoneName": ZONE, "zoneState": {"available": True},
         "hosts": services("nova-compute")}]})


# -- floating IP proxies (nova-network API, 404 from 2.36 on) --------------------


def _proxy_api(request):
    """Nova's network proxy APIs answer 404 from microversion 2.36 on."""
    if at_least(request, 36):
        raise ApiError(404, "The resource could not be found.")


@router.route("GET", "/v2.1/os-floating-ip-pools")
def list_floating_ip_pools(cloud, request):
    _proxy_api(request)
    return json_response(200, {"floating_ip_pools": [
        {"name": FLOATING_IP_POOL}]})


@router.route("GET", "/v2.1/os-floating-ips")
def list_floating_ips(cloud, request):
    _proxy_api(request)
    return json_response(200, {"floating_ips": []})


@router.route("GET", "/v2.1/os-floating-ips/{id}")
def show_floating_ip(cloud, request):
    _proxy_api(request)
    raise ApiError(404, "Floating IP not found for ID %s"
                   % request.params["id"])


def injected_message(status):
    if status == 429:
        return "This request was rate-limited."
    return ("Unexpected API Error. Please report this at "
            "http://bugs.launchpad.net/nova/ and attach the Nova API log if "
            "possible.\n<class 'localcloud.faults.InjectedFault'>")

