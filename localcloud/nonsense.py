"""Answers that are not what a call expects (the ``nonsense`` knob), and the
made-up list entries of ``paging: endless``.

``garble(response, nonsense)`` rewrites a successful JSON answer after its
handler produced it, so everything else (counting, spans, state) is as for a
sane answer.  ``ROUTES`` names the call kind of each route whose answer the
clients turn into objects; other routes (keystone, version documents, the
image schema, limits, deletes) are never garbled.
"""

import json

from localcloud.web import Response

ROUTES = {
    "GET /compute/v2.1/servers": "list-servers",
    "GET /compute/v2.1/servers/detail": "list-servers",
    "GET /compute/v2.1/servers/{id}": "show-server",
    "POST /compute/v2.1/servers": "create-server",
    "POST /compute/v2.1/servers/{id}/action": "server-action",
    "GET /compute/v2.1/flavors": "list-flavors",
    "GET /compute/v2.1/flavors/detail": "list-flavors",
    "GET /compute/v2.1/os-keypairs": "list-keypairs",
    "GET /compute/v2.1/os-keypairs/{name}": "show-keypair",
    "POST /compute/v2.1/os-keypairs": "create-keypair",
    "GET /image/v2/images": "list-images",
    "GET /image/v2/images/{id}": "show-image",
}

LISTS = ("servers", "flavors", "keypairs", "images")
SINGLES = ("server", "flavor", "keypair")

HTML = (b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head>\n"
        b"<body><h1>It works!</h1><p>This is the default web page for this "
        b"server.</p></body></html>\n")

#: Ids of made-up entries: PHANTOM_PREFIX + 12 hex digits counting from 1.
PHANTOM_PREFIX = "00000000-0000-4000-8000-"


def phantom_id(number):
    return "%s%012x" % (PHANTOM_PREFIX, number)


def phantom_number(marker):
    """The number of a made-up entry's id, or None for a real one."""
    if marker and marker.startswith(PHANTOM_PREFIX):
        try:
            return int(marker[len(PHANTOM_PREFIX):], 16)
        except ValueError:
            return None
    return None


def _entry(body):
    """The (first) resource of an answer: a list's first item, the single
    object under its key, or glance's top-level image.  Returns (container,
    key) so the entry can be replaced, or None."""
    if not isinstance(body, dict):
        return None
    for key in LISTS:
        if isinstance(body.get(key), list):
            items = body[key]
            if not items:
                return None
            if key == "keypairs" and isinstance(items[0], dict) \
                    and isinstance(items[0].get("keypair"), dict):
                return items[0], "keypair"
            return items, 0
    for key in SINGLES:
        if isinstance(body.get(key), dict):
            return body, key
    if "id" in body and "status" in body:     # glance's show
        return body, None
    return None


def garble(response, nonsense):
    """The response with ``nonsense`` applied (a new Response, or the same
    one when the change does not apply)."""
    if not 200 <= response.status < 300:
        return response
    if nonsense == "html-200":
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-type", "location")}
        return Response(200, HTML, "text/html; charset=UTF-8", headers)
    if not response.body:
        return response
    if nonsense == "truncated-json":
        return Response(response.status, response.body[:len(response.body) // 2],
                        headers=response.headers)
    if nonsense == "empty-object":
        return Response(response.status, b"{}", headers=response.headers)
    try:
        body = json.loads(response.body)
    except ValueError:
        return response
    found = _entry(body)
    if found is None:
        return response
    container, key = found
    entry = container if key is None else container[key]
    if nonsense == "string-item":
        if key is None:
            body = "image"
        else:
            container[key] = "%s" % entry.get("id", "entry")
    elif nonsense in ("missing-id", "missing-name"):
        entry.pop(nonsense[len("missing-"):], None)
    elif nonsense == "null-addresses":
        if "addresses" not in entry:
            return response
        entry["addresses"] = None
    elif nonsense == "bad-metadata":
        if "metadata" not in entry:
            return response
        entry["metadata"] = sorted(entry["metadata"] or {}) or ["metadata"]
    return Response(response.status, json.dumps(body).encode("utf-8"),
                    headers=response.headers)
