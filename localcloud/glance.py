"""Glance v2 under /image: version documents, images list (filters, sorting,
limit/marker paging with ``first``/``next``), show, delete, and the image
schema glanceclient fetches once per client.

Shapes follow glance's api-ref samples (images-list-response.json,
image-show-response.json, schemas-image-show-response.json) and
glance/api/v2/images.py.  Errors are what webob sends real glance clients:
text/html bodies (``<h1>404 Not Found</h1> No image found with ID x``) or
text/plain, always with a Content-Type; glanceclient cannot parse JSON errors
whose top-level values are not objects, nor errors without a Content-Type.

An active image's ``checksum`` (MD5) and ``os_hash_value`` (SHA-512, glance's
default ``hashing_algorithm``) are digests of the same bytes, its data as
stored (see ``store_digests``), computed the first time the image is shown
active and kept: a store does not change once its image is active.
"""

import hashlib
import os
import stat
import threading
from urllib.parse import urlencode

from localcloud import nonsense
from localcloud.state import ApiError, iso
from localcloud.web import Response, Router, json_response, public, require_token

PREFIX = "/image"
CURRENT = (2, 16)
DEFAULT_LIMIT = 25      # glance's limit_param_default
MAX_LIMIT = 1000        # glance's api_limit_max
REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id",
             "created_at", "updated_at", "visibility", "owner", "min_disk",
             "min_ram")
#: Query parameters that are not property filters.
RESERVED = {"limit", "marker", "sort_key", "sort_dir", "sort", "tag",
            "member_status", "os_hidden"}
BASE_FIELDS = {"id", "name", "status", "visibility", "protected", "os_hidden",
               "owner", "size", "virtual_size", "checksum", "os_hash_algo",
               "os_hash_value", "container_format", "disk_format", "min_disk",
               "min_ram", "created_at", "updated_at", "tags", "self", "file",
               "schema", "locations", "direct_url"}

#: glance's default ``hashing_algorithm`` (os_hash_algo).
HASH_ALGO = "sha512"

router = Router()
_digests = {}               # (image id, store, created) -> (md5, sha512)
_digests_lock = threading.Lock()


def render_error(cloud, request, status, message, headers=None):
    headers = dict(headers or {})
    if status == 401:
        # keystonemiddleware's answer; every top-level value is an object
        # with a "message", the one JSON shape glanceclient understands.
        return json_response(401, {"error": {
            "code": 401, "title": "Unauthorized", "message": message}}, headers)
    title = "%d %s" % (status, REASONS.get(status, "Error"))
    if status >= 500 or status == 429:
        return Response(status, "%s\n\n%s\n\n   " % (title, message),
                        "text/plain; charset=UTF-8", headers)
    body = ("<html>\n <head>\n  <title>%s</title>\n </head>\n <body>\n"
            "  <h1>%s</h1>\n  %s<br /><br />\n\n\n\n </body>\n</html>"
            % (title, title, _escape(message)))
    return Response(status, body, "text/html; charset=UTF-8", headers)


def _escape(text):
    return (text.replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def handle(cloud, request, handler):
    if not getattr(handler, "public", False):
        require_token(cloud, request)
    return handler(cloud, request)


def injected_message(status):
    if status == 429:
        return "Too many requests, please retry later."
    return ("The server has either erred or is incapable of performing the "
            "requested operation.")


# -- versions ---------------------------------------------------------------------


def _versions(cloud):
    href = cloud.base_url + PREFIX + "/v2/"
    values = []
    for minor in range(CURRENT[1], -1, -1):
        values.append({"id": "v2.%d" % minor,
                       "status": "CURRENT" if minor == CURRENT[1]
                       else "SUPPORTED",
                       "links": [{"rel": "self", "href": href}]})
    return {"versions": values}


@router.route("GET", "")
@public
def versions(cloud, request):
    return json_response(300, _versions(cloud))


@router.route("GET", "/versions")
@public
def versions_list(cloud, request):
    return json_response(200, _versions(cloud))


# -- images -----------------------------------------------------------------------


def store_digests(path):
    """(md5, sha512) hex digests of an image store, both of the same bytes.

    A file store is hashed as it is.  A directory store (every image here)
    is hashed as a canonical stream of its tree, so equal trees hash equal
    whatever their file times or inode order: for each entry below the
    store, in byte order of its relative path (``/``-separated), one record
    ``TYPE MODE PATH\0`` (TYPE ``d``, ``f`` or ``l``; MODE the permission
    bits as 4 octal digits), then for a file ``SIZE\0`` and its content, for
    a symlink ``TARGET\0``.  Sockets and fifos are left out (snapshots do
    not copy them); a file that cannot be read counts as ``-1\0``.
    """
    md5, sha = hashlib.md5(), hashlib.new(HASH_ALGO)

    def feed(data):
        md5.update(data)
        sha.update(data)

    if not os.path.isdir(path):
        _feed_file(feed, path)
        return md5.hexdigest(), sha.hexdigest()
    base = os.fsencode(path)
    for rel in sorted(_tree_entries(base)):
        full = os.path.join(base, rel)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            kind = b"d"
        elif stat.S_ISREG(st.st_mode):
            kind = b"f"
        elif stat.S_ISLNK(st.st_mode):
            kind = b"l"
        else:
            continue
        feed(b"%s %04o %s\0" % (kind, stat.S_IMODE(st.st_mode), rel))
        if kind == b"f":
            _feed_file(feed, full, with_size=True)
        elif kind == b"l":
            try:
                feed(os.readlink(full) + b"\0")
            except OSError:
                feed(b"\0")
    return md5.hexdigest(), sha.hexdigest()


def _tree_entries(base):
    """Relative paths (bytes, ``/``-separated) of everything below base;
    symlinks to directories are entries, not followed."""
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        for name in dirnames + filenames:
            yield name if rel == b"." else rel + b"/" + name


def _feed_file(feed, path, with_size=False):
    try:
        with open(path, "rb") as f:
            if with_size:
                feed(b"%d\0" % os.fstat(f.fileno()).st_size)
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                feed(chunk)
    except OSError:
        if with_size:
            feed(b"-1\0")


def _image_digests(image):
    """(md5, sha512) of an active image's store, computed once."""
    if image["status"] != "active" or not image.get("store"):
        return None, None
    key = (image["id"], image["store"], image["created"])
    with _digests_lock:
        digests = _digests.get(key)
    if digests is None:
        digests = store_digests(image["store"])
        with _digests_lock:
            digests = _digests.setdefault(key, digests)
    return digests


def _forget_digests(image_id):
    with _digests_lock:
        for key in [k for k in _digests if k[0] == image_id]:
            del _digests[key]


def image_view(image):
    checksum, hash_value = _image_digests(image)
    view = {
        "id": image["id"], "name": image["name"], "status": image["status"],
        "visibility": image["visibility"], "protected": image["protected"],
        "os_hidden": False, "owner": image["owner"], "size": image["size"],
        "virtual_size": None, "checksum": checksum,
        "os_hash_algo": HASH_ALGO if hash_value else None,
        "os_hash_value": hash_value,
        "container_format": "bare", "disk_format": "raw",
        "min_disk": image["min_disk"], "min_ram": image["min_ram"],
        "created_at": iso(image["created"]),
        "updated_at": iso(image["updated"]),
        "tags": [],
        "self": "/v2/images/%s" % image["id"],
        "file": "/v2/images/%s/file" % image["id"],
        "schema": "/v2/schemas/image",
    }
    for key, value in image["properties"].items():
        if key not in BASE_FIELDS:
            view[key] = value
    return view


def _sort_spec(request):
    """[(key, descending)] from sort_key/sort_dir or sort=k:dir,..."""
    spec = []
    if request.arg("sort"):
        if request.args("sort_key") or request.args("sort_dir"):
            raise ApiError(400, "The 'sort' parameter cannot be combined with "
                           "'sort_key' or 'sort_dir'.")
        for part in request.arg("sort").split(","):
            key, _, direction = part.strip().partition(":")
            spec.append((key, direction or "desc"))
    else:
        keys = request.args("sort_key") or ["created_at"]
        dirs = request.args("sort_dir") or ["desc"]
        for index, key in enumerate(keys):
            spec.append((key, dirs[min(index, len(dirs) - 1)]))
    result = []
    for key, direction in spec:
        if key not in SORT_KEYS:
            raise ApiError(400, "Invalid sort key: %s. It should be one of the "
                           "following: %s" % (key, ", ".join(SORT_KEYS)))
        if direction not in ("asc", "desc"):
            raise ApiError(400, "Invalid sort direction: %s" % direction)
        result.append((key, direction == "desc"))
    if "created_at" not in [k for k, _ in result]:
        result.append(("created_at", True))
    result.append(("id", True))
    return result


def _sort_value(view, image, key):
    if key == "created_at":
        return image["seq"]
    value = view.get(key)
    return (value is not None, value if value is not None else "")


def _sorted(items, spec):
    """Stable multi-key sort; each key has its own direction."""
    for key, descending in reversed(spec):
        items.sort(key=lambda pair: _sort_value(pair[0], pair[1], key),
                   reverse=descending)
    return items


def _matches(view, filters):
    """Exact-match filters on fields and extra properties, as glance does."""
    for key, wanted in filters.items():
        value = view.get(key)
        if isinstance(value, bool):
            value = "true" if value else "false"
        if value is None or str(value) != wanted:
            return False
    return True


@router.route("GET", "/v2/images")
def list_images(cloud, request):
    try:
        limit = int(request.arg("limit", DEFAULT_LIMIT))
    except ValueError:
        raise ApiError(400, "limit param must be an integer") from None
    if limit < 0:
        raise ApiError(400, "limit param must be positive")
    limit = min(limit, MAX_LIMIT, cloud.config.max_page_size)
    spec = _sort_spec(request)
    items = _sorted([(image_view(i), i) for i in cloud.state.list_images()],
                    spec)
    paging = cloud.state.faults["paging"]
    marker = request.arg("marker")
    if paging == "repeat-marker":
        marker = None                   # ignored: every page is the first
    phantom = nonsense.phantom_number(marker) if paging == "endless" else None
    if phantom is not None:             # past the real images
        items, marker = [], None
    if marker is not None:
        ids = [view["id"] for view, _ in items]
        if marker not in ids:
            raise ApiError(400, "marker not found: %s" % marker)
        items = items[ids.index(marker) + 1:]
    filters = {k: v[-1] for k, v in request.query.items()
               if k not in RESERVED}
    tags = request.args("tag")
    selected = []
    for view, _ in items:
        if tags or not _matches(view, filters):   # images here have no tags
            continue
        selected.append(view)
        if len(selected) == limit:
            break
    if paging == "endless":
        first = (phantom or 0) + 1
        selected += [_phantom_image(cloud, n) for n in
                     range(first, first + limit - len(selected))]
    params = [(k, v) for k, values in request.query.items()
              if k != "marker" for v in values]
    query = urlencode(params)
    body = {"images": selected, "schema": "/v2/schemas/images",
            "first": "/v2/images" + ("?" + query if query else "")}
    if selected and (len(selected) == limit or paging == "repeat-marker"):
        body["next"] = "/v2/images?" + urlencode(
            params + [("marker", selected[-1]["id"])])
    return json_response(200, body)


def _phantom_image(cloud, number):
    """A made-up image of ``paging: endless``."""
    ident = nonsense.phantom_id(number)
    return {"id": ident, "name": "phantom-%d" % number, "status": "active",
            "visibility": "private", "protected": False, "os_hidden": False,
            "owner": cloud.state.project_id, "size": 0, "virtual_size": None,
            "checksum": None, "os_hash_algo": None, "os_hash_value": None,
            "container_format": "bare", "disk_format": "raw", "min_disk": 0,
            "min_ram": 0, "created_at": "2012-01-01T00:00:00Z",
            "updated_at": "2012-01-01T00:00:00Z", "tags": [],
            "self": "/v2/images/%s" % ident,
            "file": "/v2/images/%s/file" % ident,
            "schema": "/v2/schemas/image"}


@router.route("GET", "/v2/images/{id}")
def show_image(cloud, request):
    return json_response(200, image_view(cloud.state.get_image(
        request.params["id"])))


@router.route("DELETE", "/v2/images/{id}")
def delete_image(cloud, request):
    cloud.state.delete_image(request.params["id"])
    _forget_digests(request.params["id"])
    return Response(204)


def _property(description, kind="string", **extra):
    prop = {"description": description, "type": kind}
    prop.update(extra)
    return prop


UUID_PATTERN = ("^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$")
IMAGE_SCHEMA = {
    "name": "image",
    "additionalProperties": {"type": "string"},
    "links": [{"href": "{self}", "rel": "self"},
              {"href": "{file}", "rel": "enclosure"},
              {"href": "{schema}", "rel": "describedby"}],
    "properties": {
        "id": _property("An identifier for the image", pattern=UUID_PATTERN),
        "name": _property("Descriptive name for the image", ["null", "string"],
                          maxLength=255),
        "status": _property("Status of the image", readOnly=True, enum=[
            "queued", "saving", "active", "killed", "deleted",
            "pending_delete", "deactivated", "uploading", "importing"]),
        "visibility": _property("Scope of image accessibility", enum=[
            "community", "public", "private", "shared"]),
        "protected": _property("If true, image will not be deletable.",
                               "boolean"),
        "os_hidden": _property("If true, image will not appear in default "
                               "image list response.", "boolean"),
        "checksum": _property("md5 hash of image contents.",
                              ["null", "string"], readOnly=True, maxLength=32),
        "os_hash_algo": _property("Algorithm to calculate the os_hash_value",
                                  ["null", "string"], readOnly=True,
                                  maxLength=64),
        "os_hash_value": _property("Hexdigest of the image contents using the "
                                   "algorithm specified by the os_hash_algo",
                                   ["null", "string"], readOnly=True,
                                   maxLength=128),
        "owner": _property("Owner of the image", ["null", "string"],
                           maxLength=255),
        "size": _property("Size of image file in bytes", ["null", "integer"],
                          readOnly=True),
        "virtual_size": _property("Virtual size of image in bytes",
                                  ["null", "integer"], readOnly=True),
        "container_format": _property("Format of the container",
                                      ["null", "string"], enum=[
                                          None, "ami", "ari", "aki", "bare",
                                          "ovf", "ova", "docker",
                                          "compressed"]),
        "disk_format": _property("Format of the disk", ["null", "string"],
                                 enum=[None, "ami", "ari", "aki", "vhd",
                                       "vhdx", "vmdk", "raw", "qcow2", "vdi",
                                       "iso", "ploop"]),
        "created_at": _property("Date and time of image registration",
                                readOnly=True),
        "updated_at": _property("Date and time of the last image "
                                "modification", readOnly=True),
        "tags": _property("List of strings related to the image", "array",
                          items={"type": "string", "maxLength": 255}),
        "direct_url": _property("URL to access the image file kept in "
                                "external store", readOnly=True),
        "min_ram": _property("Amount of ram (in MB) required to boot image.",
                             "integer"),
        "min_disk": _property("Amount of disk space (in GB) required to boot "
                              "image.", "integer"),
        "self": _property("An image self url", readOnly=True),
        "file": _property("An image file url", readOnly=True),
        "schema": _property("An image schema url", readOnly=True),
        "instance_uuid": _property("Metadata which can be used to record "
                                   "which instance this image is associated "
                                   "with. (Informational only, does not "
                                   "create an instance snapshot.)",
                                   is_base=False),
        "locations": _property("A set of URLs to access the image file kept "
                               "in external store", "array", items={
                                   "type": "object", "required": [
                                       "url", "metadata"],
                                   "properties": {
                                       "url": {"type": "string",
                                               "maxLength": 255},
                                       "metadata": {"type": "object"}}}),
    },
}


@router.route("GET", "/v2/schemas/image")
def image_schema(cloud, request):
    return json_response(200, IMAGE_SCHEMA)


@router.route("GET", "/v2/schemas/images")
def images_schema(cloud, request):
    return json_response(200, {
        "name": "images",
        "properties": {"images": {"type": "array", "items": IMAGE_SCHEMA},
                       "schema": {"type": "string"},
                       "first": {"type": "string"},
                       "next": {"type": "string"}},
        "links": [{"href": "{first}", "rel": "first"},
                  {"href": "{next}", "rel": "next"},
                  {"href": "{schema}", "rel": "describedby"}],
    })
