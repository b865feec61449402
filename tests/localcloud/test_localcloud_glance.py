"""Glance v2 through the real python-glanceclient: paging, get, delete,
status, filters and the error bodies glanceclient can parse."""

import os

import pytest
import requests
from glanceclient import exc as glance_exc

from localcloud.testing import wait_for_image

BASE = "Ubuntu 12.04 LTS"


@pytest.fixture
def five_images(make_clouds, cloud_config):
    images = [{"name": "image-%d" % i, "properties": {"n": str(i)}}
              for i in range(5)]
    lc = make_clouds({"clouds": [cloud_config(images=images)]})
    return lc["local"]


def test_list_pages_follow_next(five_images):
    glance = five_images.glance()
    five_images.reset_stats()
    names = [i.name for i in glance.images.list(page_size=2)]
    # newest first: the last seeded image was registered last
    assert names == ["image-4", "image-3", "image-2", "image-1", "image-0"]
    assert five_images.calls("GET /image/v2/images") == 3
    assert five_images.calls("GET /image/v2/schemas/image") == 1

    five_images.reset_stats()
    assert len(list(glance.images.list(page_size=2, limit=3))) == 3
    assert five_images.calls("GET /image/v2/images") == 2
    five_images.reset_stats()
    assert len(list(glance.images.list(limit=3))) == 3
    assert five_images.calls("GET /image/v2/images") == 1


def test_list_body_shape_first_and_next(five_images):
    session = five_images.session()
    url = session.get_endpoint(service_type="image")
    body = session.get(url + "/v2/images?limit=2").json()
    assert body["first"] == "/v2/images?limit=2"
    assert body["schema"] == "/v2/schemas/images"
    assert body["next"] == "/v2/images?limit=2&marker=%s" % \
        body["images"][-1]["id"]
    last = session.get(url + "/v2/images?limit=10").json()
    assert "next" not in last and len(last["images"]) == 5


def test_list_filters_and_sorting(five_images):
    glance = five_images.glance()
    assert [i.name for i in glance.images.list(filters={"name": "image-2"})] \
        == ["image-2"]
    assert [i.name for i in glance.images.list(filters={"n": "3"})] == \
        ["image-3"]
    assert [i.name for i in glance.images.list(sort_key="name",
                                               sort_dir="asc")][:2] == \
        ["image-0", "image-1"]
    assert list(glance.images.list(filters={"status": "killed"})) == []


def test_get_shows_fields_and_properties(glance, base_image):
    image = glance.images.get(base_image.id)
    assert image.name == BASE and image.status == "active"
    assert image.visibility == "public" and image.protected is False
    assert image.os_distro == "ubuntu"
    assert image.size > 0           # the seeded directory's etc/issue
    for field in ("owner", "created_at", "updated_at", "container_format",
                  "disk_format", "min_disk", "min_ram", "checksum", "tags",
                  "file", "schema", "virtual_size", "os_hidden"):
        assert field in image, field


def test_404_is_html_that_glanceclient_reads(glance, cloud):
    with pytest.raises(glance_exc.HTTPNotFound) as error:
        glance.images.get("8f1ff4ad-48a8-4e23-b4fd-2a6d52b0f6a1")
    assert str(error.value) == ("HTTP 404 Not Found: No image found with ID "
                                "8f1ff4ad-48a8-4e23-b4fd-2a6d52b0f6a1")
    url = cloud.auth_url.replace("/identity", "/image")
    resp = requests.get(url + "/v2/images/nope",
                        headers={"X-Auth-Token": cloud.session().get_token()})
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "<h1>404 Not Found</h1>" in resp.text


def test_delete_removes_image_and_its_store(make_clouds, cloud_config, boot,
                                            cloud):
    glance = cloud.glance()
    server = boot("snapshotted")
    image_id = cloud.nova("2.45").servers.create_image(server.id, "doomed")
    wait_for_image(glance, image_id)
    (record,) = [i for i in cloud.images() if i["id"] == image_id]
    assert os.path.isdir(record["store"])
    glance.images.delete(image_id)
    assert not os.path.exists(record["store"])
    with pytest.raises(glance_exc.HTTPNotFound):
        glance.images.get(image_id)
    with pytest.raises(glance_exc.HTTPNotFound):
        glance.images.delete(image_id)
    assert cloud.stats()["responses"]["204"] == 1


def test_protected_image_cannot_be_deleted(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(
        images=[{"name": "keep", "protected": True}])]})
    glance = lc["local"].glance()
    (image,) = list(glance.images.list())
    with pytest.raises(glance_exc.HTTPForbidden) as error:
        glance.images.delete(image.id)
    assert "is protected and cannot be deleted" in str(error.value)


def test_injected_500_and_429_are_plain_text(glance, cloud, base_image):
    cloud.set_faults({"api-error-rate": 1.0})
    with pytest.raises(glance_exc.HTTPInternalServerError) as error:
        glance.images.get(base_image.id)
    assert "500 Internal Server Error" in str(error.value)
    cloud.set_faults({"api-error-rate": 0.0, "api-overlimit-rate": 1.0,
                      "api-overlimit-retry-after": 3})
    with pytest.raises(glance_exc.HTTPException) as error:
        glance.images.get(base_image.id)
    # glanceclient has no class for 429: a bare HTTPException (code "N/A")
    # whose details carry the status line
    assert type(error.value) is glance_exc.HTTPException
    assert "429 Too Many Requests" in str(error.value)
    url = cloud.auth_url.replace("/identity", "/image")
    resp = requests.get(url + "/v2/images")
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "3"
    assert resp.headers["Content-Type"].startswith("text/plain")


def test_versions_documents(cloud):
    url = cloud.auth_url.replace("/identity", "/image")
    root = requests.get(url)
    assert root.status_code == 300
    current = root.json()["versions"][0]
    assert current["status"] == "CURRENT"
    assert current["links"][0]["href"] == url + "/v2/"
    listed = requests.get(url + "/versions")
    assert listed.status_code == 200 and listed.json() == root.json()
    assert requests.get(url + "/v2").status_code == 404
