"""Neutron (networking v2.0) under /networking, for clouds with
``network-service: true``: version discovery, extensions, networks and
subnets (a "private" network whose subnet is the fixed range the servers'
addresses come from, and an external "public" network whose subnet is the
floating range), ports (one per server with an address: fixed IP = the
server's address, device_id = the server's id) and floating IPs (list,
show, create from the public network optionally attached to a port,
update to attach/detach/re-attach, delete).

An attached floating IP really answers: a TcpForwarder in localcloud.state
relays its SSH port to the server's fixed address (see README "Network
service").  Nova lists it in the server's addresses (OS-EXT-IPS:type
floating) from the server's ``floating_addresses``.

There are no routers: a floating IP's router_id is null.  Floating IPs are
DOWN while unattached and ACTIVE once attached, as neutron's L3 agent
reports them.

Lists take neutron's filters (any attribute of the resource, repeated for
OR; ``fixed_ips=ip_address=...``; unknown attributes are refused with 400 as
with neutron's filter-validation), ``fields``, ``limit``/``marker`` paging
(with a ``<collection>_links`` next link) and ``sort_key``/``sort_dir``.

Shapes follow neutron-lib's api-ref samples (networks/network-show-response,
subnets/subnet-show-response, ports/port-show-response,
floatingips/floatingip-show-response, -create-response and
-disassociate-response, the versions document); errors are neutron's
``{"NeutronError": {"type", "message", "detail"}}``.
"""

import ipaddress
from urllib.parse import urlencode

from localcloud.state import ApiError, iso
from localcloud.web import Response, Router, json_response, public, require_token

PREFIX = "/networking"
ERROR_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized",
               403: "HTTPForbidden", 404: "HTTPNotFound",
               405: "HTTPMethodNotAllowed", 409: "HTTPConflict",
               429: "HTTPTooManyRequests", 500: "HTTPInternalServerError",
               503: "HTTPServiceUnavailable"}
#: (alias, name, description) of the extensions whose attributes we show
EXTENSIONS = [
    ("external-net", "Neutron external network",
     "Adds external network attribute to network resource."),
    ("fip-port-details", "Floating IP Port Details Extension",
     "Add port_details attribute to Floating IP resource"),
    ("project-id", "project_id field enabled",
     "Extension that indicates that project_id field is enabled."),
    ("standard-attr-description", "standard-attr-description",
     "Extension to add descriptions to standard attributes"),
    ("standard-attr-revisions", "Resource revision numbers",
     "This extension will display the revision number of neutron "
     "resources."),
    ("standard-attr-timestamp", "Resource timestamps",
     "Adds created_at and updated_at fields to all Neutron resources that "
     "have Neutron standard attributes."),
    ("filter-validation", "Filter parameters validation",
     "Provides validation on filter parameters."),
    ("port-security", "Port Security",
     "Provides port security"),
]
#: Query parameters that are not filters.
NOT_FILTERS = {"fields", "limit", "marker", "sort_key", "sort_dir",
               "page_reverse"}
TAG_FILTERS = {"tags", "tags-any", "not-tags", "not-tags-any"}

router = Router()


def catalog_url(cloud):
    return cloud.base_url + PREFIX


# -- auth and errors ---------------------------------------------------------------


def handle(cloud, request, handler):
    if getattr(handler, "public", False):
        return handler(cloud, request)
    require_token(cloud, request)
    return handler(cloud, request)


class NeutronError(ApiError):
    """An ApiError with neutron's exception type name (the dispatcher hands
    the exception to render_error as ``request.error``)."""

    def __init__(self, status, kind, message):
        super().__init__(status, message)
        self.kind = kind


def render_error(cloud, request, status, message, headers=None):
    if status == 401:
        # keystonemiddleware answers before neutron sees the request
        return json_response(401, {"error": {
            "code": 401, "title": "Unauthorized", "message": message}},
            headers)
    kind = getattr(getattr(request, "error", None), "kind", None) or \
        ERROR_TYPES.get(status, "HTTPError")
    lowered = message.lower()
    if status == 404 and kind == "HTTPNotFound":
        for name in ("Network", "Subnet", "Port", "FloatingIP"):
            label = "floating ip" if name == "FloatingIP" else name.lower()
            if lowered.startswith(label + " ") and "could not be found" \
                    in lowered:
                kind = name + "NotFound"
    elif status == 409 and "no more ip addresses" in lowered:
        kind = "IpAddressGenerationFailure"
    elif status == 409 and "already has a floating ip" in lowered:
        kind = "FloatingIPPortAlreadyAssociated"
    return json_response(status, {"NeutronError": {
        "type": kind, "message": message, "detail": ""}}, headers)


def injected_message(status):
    if status == 429:
        return "This request was rate-limited."
    return "Request Failed: internal server error while processing your " \
        "request."


# -- versions and extensions --------------------------------------------------------


@router.route("GET", "")
@public
def versions(cloud, request):
    return json_response(200, {"versions": [{
        "id": "v2.0", "status": "CURRENT",
        "links": [{"rel": "self",
                   "href": "%s%s/v2.0/" % (cloud.base_url, PREFIX)}]}]})


COLLECTIONS = (("network", "networks"), ("subnet", "subnets"),
               ("port", "ports"), ("floatingip", "floatingips"),
               ("extension", "extensions"))


@router.route("GET", "/v2.0")
def resources(cloud, request):
    return json_response(200, {"resources": [
        {"name": name, "collection": collection,
         "links": [{"rel": "self", "href": "%s%s/v2.0/%s"
                    % (cloud.base_url, PREFIX, collection)}]}
        for name, collection in COLLECTIONS]})


def _extension(alias, name, description):
    return {"alias": alias, "name": name, "description": description,
            "updated": "2013-01-20T00:00:00-00:00", "links": []}


@router.route("GET", "/v2.0/extensions")
def list_extensions(cloud, request):
    return json_response(200, {"extensions": [_extension(*e)
                                              for e in EXTENSIONS]})


@router.route("GET", "/v2.0/extensions/{alias}")
def show_extension(cloud, request):
    for ext in EXTENSIONS:
        if ext[0] == request.params["alias"]:
            return json_response(200, {"extension": _extension(*ext)})
    raise NeutronError(404, "ExtensionNotFound", "Extension with alias %s "
                       "does not exist" % request.params["alias"])


# -- views ----------------------------------------------------------------------------


def _standard(ts_created, ts_updated, revision=0):
    return {"description": "", "tags": [], "created_at": iso(ts_created),
            "updated_at": iso(ts_updated), "revision_number": revision}


def _networks(cloud):
    state, config = cloud.state, cloud.config
    created = state.network_created
    common = {"status": "ACTIVE", "admin_state_up": True, "shared": False,
              "mtu": 1500, "port_security_enabled": True,
              "availability_zone_hints": [], "availability_zones": ["nova"],
              "ipv4_address_scope": None, "ipv6_address_scope": None,
              "qos_policy_id": None, "l2_adjacency": True}
    private = dict(common, **_standard(created, created))
    private.update({"id": state.private_network_id,
                    "name": config.network_name,
                    "subnets": [state.private_subnet_id],
                    "router:external": False,
                    "project_id": state.project_id,
                    "tenant_id": state.project_id})
    public_net = dict(common, **_standard(created, created))
    public_net.update({"id": state.public_network_id, "name": "public",
                       "subnets": [state.public_subnet_id],
                       "router:external": True, "is_default": True,
                       "project_id": state.admin_project_id,
                       "tenant_id": state.admin_project_id})
    # public first: openstacksdk takes the *last* network with a gateway as
    # its NAT destination (where floating IPs point), which is private
    return [public_net, private]


def _subnet(cloud, subnet_id, name, network_id, network, project_id, dhcp):
    first = int(network.network_address)
    created = cloud.state.network_created
    view = {"id": subnet_id, "name": name, "network_id": network_id,
            "ip_version": 4, "cidr": str(network),
            "gateway_ip": str(ipaddress.IPv4Address(first + 1)),
            "allocation_pools": [{
                "start": str(ipaddress.IPv4Address(first + 2)),
                "end": str(network.broadcast_address - 1)}],
            "enable_dhcp": dhcp, "dns_nameservers": [], "host_routes": [],
            "ipv6_address_mode": None, "ipv6_ra_mode": None,
            "segment_id": None, "subnetpool_id": None, "service_types": [],
            "dns_publish_fixed_ip": False,
            "project_id": project_id, "tenant_id": project_id}
    view.update(_standard(created, created))
    return view


def _subnets(cloud):
    state, config = cloud.state, cloud.config
    return [_subnet(cloud, state.private_subnet_id, config.network_name +
                    "-subnet", state.private_network_id, config.fixed_range,
                    state.project_id, True),
            _subnet(cloud, state.public_subnet_id, "public-subnet",
                    state.public_network_id, config.floating_range,
                    state.admin_project_id, False)]


def _port_view(cloud, port):
    state = cloud.state
    view = {"id": port["id"], "name": "", "network_id":
            state.private_network_id, "mac_address": port["mac"],
            "admin_state_up": True, "status": "ACTIVE",
            "device_id": port["server_id"], "device_owner": "compute:nova",
            "fixed_ips": [{"subnet_id": state.private_subnet_id,
                           "ip_address": port["address"]}],
            "allowed_address_pairs": [], "extra_dhcp_opts": [],
            "security_groups": [], "port_security_enabled": True,
            "binding:vnic_type": "normal", "qos_policy_id": None,
            "project_id": state.project_id, "tenant_id": state.project_id}
    view.update(_standard(port["created"], port["updated"], 1))
    return view


def _ports(cloud):
    return [_port_view(cloud, port) for port in cloud.state.ports()]


def _fip_view(cloud, fip, ports=None):
    state = cloud.state
    details = None
    if fip["port_id"] is not None:
        if ports is None:
            ports = {p["id"]: p for p in _ports(cloud)}
        port = ports.get(fip["port_id"])
        if port is not None:
            details = {key: port[key] for key in (
                "name", "network_id", "mac_address", "admin_state_up",
                "status", "device_id", "device_owner")}
    view = {"id": fip["id"], "floating_ip_address": fip["address"],
            "floating_network_id": state.public_network_id,
            "router_id": None, "port_id": fip["port_id"],
            "fixed_ip_address": fip["fixed_address"],
            "status": fip["status"], "port_details": details,
            "port_forwardings": [], "qos_policy_id": None,
            "project_id": state.project_id, "tenant_id": state.project_id}
    view.update(_standard(fip["created"], fip["updated"], fip["revision"]))
    view["description"] = fip["description"]
    return view


#: Stand-ins whose views name a port's and a floating IP's attributes.
_NO_PORT = {"id": "", "server_id": "", "address": "", "mac": "",
            "created": 0, "updated": 0}
_NO_FIP = {"id": "", "address": "", "port_id": None, "fixed_address": None,
           "status": "DOWN", "created": 0, "updated": 0, "revision": 0,
           "description": ""}


def _fips(cloud):
    ports = {p["id"]: p for p in _ports(cloud)}
    return [_fip_view(cloud, fip, ports)
            for fip in cloud.state.list_floating_ips()]


# -- lists: filters, fields, sorting, paging ---------------------------------------


def _truth(value):
    return value.strip().lower() in ("true", "1", "yes", "on")


def _matches(actual, wanted, key):
    if key == "fixed_ips":
        # fixed_ips=ip_address=10.0.0.3 / subnet_id=... / ip_address_substr=
        name, _, value = wanted.partition("=")
        for entry in actual:
            if name == "ip_address_substr" and value in entry["ip_address"]:
                return True
            if entry.get(name) == value:
                return True
        return False
    if isinstance(actual, bool):
        return _truth(wanted) == actual
    if actual is None:
        return wanted in ("", "None", "null")
    if isinstance(actual, list):
        return wanted in [str(a) for a in actual]
    return str(actual) == wanted


def _list(cloud, request, collection, items, keys):
    """Answer a list call: ``keys`` are the resource's attributes (what may
    be filtered and sorted on, even when there are no items)."""
    for key, values in request.query.items():
        if key in NOT_FILTERS:
            continue
        if key in TAG_FILTERS:
            # nothing here has tags: "tags"/"tags-any" match nothing
            if key in ("tags", "tags-any") and any(values):
                items = []
            continue
        if key not in keys:
            raise NeutronError(400, "HTTPBadRequest", "[%s] is invalid "
                               "attribute for filtering" % key)
        items = [item for item in items
                 if any(_matches(item.get(key), v, key) for v in values)]
    sort_keys = request.args("sort_key")
    sort_dirs = request.args("sort_dir")
    for index in reversed(range(len(sort_keys))):
        key = sort_keys[index]
        if key not in keys:
            raise NeutronError(400, "HTTPBadRequest", "%s is an invalid "
                               "attribute for sort_keys" % key)
        descending = index < len(sort_dirs) and \
            sort_dirs[index].lower() == "desc"
        items = sorted(items, key=lambda item: str(item.get(key)),
                       reverse=descending)
    marker = request.arg("marker")
    if marker:
        ids = [item["id"] for item in items]
        if marker not in ids:
            raise NeutronError(404, "HTTPNotFound", "The marker %s could not "
                               "be found." % marker)
        items = items[ids.index(marker) + 1:]
    body = {}
    limit = request.arg("limit")
    if limit:
        try:
            limit = int(limit)
        except ValueError:
            raise NeutronError(400, "HTTPBadRequest", "Bad limit request: "
                               "Limit must be an integer 0 or greater and "
                               "not '%s'." % limit) from None
        if limit > 0 and len(items) > limit:
            items = items[:limit]
            params = [(k, v) for k, vs in sorted(request.query.items())
                      if k not in ("limit", "marker") for v in vs]
            params += [("limit", str(limit)), ("marker", items[-1]["id"])]
            body[collection + "_links"] = [{
                "rel": "next", "href": "%s%s/v2.0/%s?%s" % (
                    cloud.base_url, PREFIX, collection, urlencode(params))}]
    body[collection] = [_fields(request, item) for item in items]
    return json_response(200, body)


def _fields(request, item):
    fields = [f for f in request.args("fields") if f]
    if not fields:
        return item
    return {key: value for key, value in item.items() if key in fields}


def _show(request, kind, items, ident, label):
    for item in items:
        if item["id"] == ident:
            return json_response(200, {kind: _fields(request, item)})
    raise ApiError(404, "%s %s could not be found." % (label, ident))


# -- networks, subnets, ports -----------------------------------------------------------


@router.route("GET", "/v2.0/networks")
def list_networks(cloud, request):
    networks = _networks(cloud)
    return _list(cloud, request, "networks", networks, set(networks[0]))


@router.route("GET", "/v2.0/networks/{id}")
def show_network(cloud, request):
    return _show(request, "network", _networks(cloud), request.params["id"],
                 "Network")


@router.route("GET", "/v2.0/subnets")
def list_subnets(cloud, request):
    subnets = _subnets(cloud)
    return _list(cloud, request, "subnets", subnets, set(subnets[0]))


@router.route("GET", "/v2.0/subnets/{id}")
def show_subnet(cloud, request):
    return _show(request, "subnet", _subnets(cloud), request.params["id"],
                 "Subnet")


@router.route("GET", "/v2.0/ports")
def list_ports(cloud, request):
    return _list(cloud, request, "ports", _ports(cloud),
                 set(_port_view(cloud, _NO_PORT)))


@router.route("GET", "/v2.0/ports/{id}")
def show_port(cloud, request):
    return _show(request, "port", _ports(cloud), request.params["id"],
                 "Port")


# -- floating IPs ----------------------------------------------------------------------


def _body(request, key):
    try:
        body = request.json()
    except ValueError:
        raise NeutronError(400, "HTTPBadRequest", "Malformed request body")\
            from None
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        raise NeutronError(400, "HTTPBadRequest", "Resource body required")
    return body[key]


def _optional_string(args, key):
    value = args.get(key)
    if value is not None and not isinstance(value, str):
        raise NeutronError(400, "HTTPBadRequest", "Invalid input for %s. "
                           "Reason: '%s' is not a valid string."
                           % (key, value))
    return value


@router.route("GET", "/v2.0/floatingips")
def list_floating_ips(cloud, request):
    return _list(cloud, request, "floatingips", _fips(cloud),
                 set(_fip_view(cloud, _NO_FIP)))


@router.route("GET", "/v2.0/floatingips/{id}")
def show_floating_ip(cloud, request):
    fip = cloud.state.get_floating_ip(request.params["id"])
    return json_response(200, {"floatingip": _fields(request,
                                                     _fip_view(cloud, fip))})


@router.route("POST", "/v2.0/floatingips")
def create_floating_ip(cloud, request):
    args = _body(request, "floatingip")
    network_id = args.get("floating_network_id")
    if not network_id:
        raise NeutronError(400, "HTTPBadRequest", "Invalid input for "
                           "operation: floating_network_id is required.")
    state = cloud.state
    if network_id == state.private_network_id:
        raise NeutronError(400, "HTTPBadRequest", "Bad floatingip request: "
                           "Network %s is not a valid external network."
                           % network_id)
    if network_id != state.public_network_id:
        raise ApiError(404, "Network %s could not be found." % network_id)
    subnet_id = args.get("subnet_id")
    if subnet_id not in (None, state.public_subnet_id):
        raise ApiError(404, "Subnet %s could not be found." % subnet_id)
    fip = state.create_floating_ip(
        port_id=_optional_string(args, "port_id"),
        fixed_address=_optional_string(args, "fixed_ip_address"),
        address=_optional_string(args, "floating_ip_address"),
        description=_optional_string(args, "description") or "")
    return json_response(201, {"floatingip": _fip_view(cloud, fip)})


@router.route("PUT", "/v2.0/floatingips/{id}")
def update_floating_ip(cloud, request):
    args = _body(request, "floatingip")
    fip_id = request.params["id"]
    current = cloud.state.get_floating_ip(fip_id)
    port_id = args["port_id"] if "port_id" in args else current["port_id"]
    if port_id is not None and not isinstance(port_id, str):
        raise NeutronError(400, "HTTPBadRequest", "Invalid input for port_id. "
                           "Reason: '%s' is not a valid UUID." % (port_id,))
    fip = cloud.state.update_floating_ip(
        fip_id, port_id=port_id,
        fixed_address=_optional_string(args, "fixed_ip_address"),
        description=_optional_string(args, "description"))
    return json_response(200, {"floatingip": _fip_view(cloud, fip)})


@router.route("DELETE", "/v2.0/floatingips/{id}")
def delete_floating_ip(cloud, request):
    cloud.state.delete_floating_ip(request.params["id"])
    return Response(204)

