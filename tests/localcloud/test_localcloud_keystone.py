"""Keystone v3 through the real keystoneauth1: discovery, password auth, the
catalog, bad credentials, revocation (one 401, then re-authentication) and
token expiry."""

import time

import pytest
import requests
from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import generic, v3
from keystoneauth1 import token_endpoint
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc


def test_generic_password_discovers_then_authenticates(cloud):
    session = cloud.session()
    token = session.get_token()
    assert token.startswith("lc")
    assert cloud.calls("GET /identity") == 1
    assert cloud.calls("POST /identity/v3/auth/tokens") == 1
    access = session.auth.get_access(session)
    assert access.project_name == "demo" and access.username == "demo"
    assert access.project_id and access.user_id
    assert access.expires is not None
    assert access.service_catalog.url_for(
        service_type="compute", interface="public") == \
        cloud.auth_url.replace("/identity", "/compute/v2.1")
    assert session.get_endpoint(service_type="image", interface="public") == \
        cloud.auth_url.replace("/identity", "/image")
    assert session.get_endpoint(service_type="identity",
                                interface="admin") == cloud.auth_url


def test_v3_password_with_versioned_url(cloud):
    auth = v3.Password(auth_url=cloud.auth_url + "/v3",
                       **{k: v for k, v in cloud.auth.items()
                          if k != "auth_url"})
    session = ksa_session.Session(auth=auth)
    assert session.get_token()
    assert cloud.calls("GET /identity") == 0        # no discovery needed


def test_token_response_shape(cloud):
    body = {"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": "demo", "password": cloud.auth["password"],
                 "domain": {"name": "Default"}}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}}
    resp = requests.post(cloud.auth_url + "/v3/auth/tokens", json=body)
    assert resp.status_code == 201
    assert resp.headers["X-Subject-Token"]
    assert resp.headers["Vary"] == "X-Auth-Token"
    token = resp.json()["token"]
    assert token["methods"] == ["password"]
    assert token["expires_at"].endswith("Z")
    assert token["project"]["domain"] == {"id": "default", "name": "Default"}
    types = {entry["type"]: entry for entry in token["catalog"]}
    assert set(types) == {"identity", "compute", "image", "block-storage", "volumev3"}
    endpoint = types["compute"]["endpoints"][0]
    assert set(endpoint) == {"id", "interface", "region", "region_id", "url"}
    assert {e["interface"] for e in types["image"]["endpoints"]} == \
        {"public", "internal", "admin"}


def test_versions_documents(cloud):
    resp = requests.get(cloud.auth_url)
    assert resp.status_code == 300
    (version,) = resp.json()["versions"]["values"]
    assert version["id"].startswith("v3.") and version["status"] == "stable"
    assert version["links"][0]["href"] == cloud.auth_url + "/v3/"
    assert requests.get(cloud.auth_url + "/v3").json()["version"]["id"] == \
        version["id"]
    session = cloud.session()
    image = session.get_endpoint_data(service_type="image",
                                      discover_versions=True)
    assert image.api_version[0] == 2
    assert image.url.rstrip("/").endswith("/image/v2")


def test_wrong_password_is_401_with_keystone_body(cloud):
    auth = dict(cloud.auth, password="wrong")
    session = ksa_session.Session(auth=generic.Password(**auth))
    with pytest.raises(ksa_exc.Unauthorized) as error:
        session.get_token()
    assert error.value.http_status == 401
    body = {"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": "demo", "password": "wrong",
                 "domain": {"name": "Default"}}}}}}
    resp = requests.post(cloud.auth_url + "/v3/auth/tokens", json=body)
    assert resp.json() == {"error": {
        "code": 401, "title": "Unauthorized",
        "message": "The request you have made requires authentication."}}


def test_revoked_token_gives_one_401_then_keystoneauth_recovers(cloud):
    nova = cloud.nova("2.1")
    glance = cloud.glance(session=nova.client.session)
    nova.servers.list()
    old_token = nova.client.session.get_token()
    assert cloud.revoke_tokens() == 1
    cloud.reset_stats()
    assert nova.servers.list() == []
    stats = cloud.stats()
    assert stats["responses"] == {"401": 1, "201": 1, "200": 1}
    assert stats["calls"]["GET /compute/v2.1/servers/detail"] == 2
    assert nova.client.session.get_token() != old_token
    # glance after a revocation: the same single 401 and retry
    cloud.revoke_tokens()
    cloud.reset_stats()
    assert len(list(glance.images.list())) == 1
    assert cloud.stats()["responses"]["401"] == 1


def test_token_ttl_knob_expires_tokens(cloud):
    cloud.set_faults({"token-ttl": 1})
    session = cloud.session()
    token = session.get_token()
    access = session.auth.get_access(session)
    lifetime = (access.expires - access.issued).total_seconds()
    assert 0.5 < lifetime <= 1.5
    compute = session.get_endpoint(service_type="compute")
    # a client holding a fixed token sees it die
    fixed = ksa_session.Session(auth=token_endpoint.Token(compute, token))
    nova = nova_client.Client("2.1", session=fixed)
    assert nova.servers.list() == []
    time.sleep(1.2)
    with pytest.raises(nova_exc.Unauthorized):
        nova.servers.list()
    # keystoneauth with a password re-authenticates by itself
    tokens_before = cloud.stats()["events"]["tokens-issued"]
    assert cloud.nova("2.1", session=session).servers.list() == []
    assert cloud.stats()["events"]["tokens-issued"] > tokens_before


def test_unscoped_token_cannot_use_nova(cloud):
    body = {"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": "demo", "password": cloud.auth["password"],
                 "domain": {"name": "Default"}}}}}}
    resp = requests.post(cloud.auth_url + "/v3/auth/tokens", json=body)
    assert resp.status_code == 201 and "catalog" not in resp.json()["token"]
    compute = cloud.auth_url.replace("/identity", "/compute/v2.1")
    denied = requests.get(compute + "/servers",
                          headers={"X-Auth-Token":
                                   resp.headers["X-Subject-Token"]})
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"] == \
        'Keystone uri="%s"' % cloud.auth_url


def test_token_validation(cloud):
    session = cloud.session()
    token = session.get_token()
    resp = requests.get(cloud.auth_url + "/v3/auth/tokens",
                        headers={"X-Auth-Token": token,
                                 "X-Subject-Token": token})
    assert resp.status_code == 200
    assert resp.json()["token"]["project"]["name"] == "demo"
    gone = requests.get(cloud.auth_url + "/v3/auth/tokens",
                        headers={"X-Auth-Token": token,
                                 "X-Subject-Token": "lc-revoked"})
    assert gone.status_code == 404
    assert gone.json()["error"]["title"] == "Not Found"
