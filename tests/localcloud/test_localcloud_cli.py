"""devstack-localcloud: run N clouds from YAML as a real subprocess, write
clouds.yaml and the ready file, turn knobs and read stats from the command
line, stop cleanly on SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml

from localcloud import cmd, config
from localcloud.cmd import AdminClient
from localcloud.testing import (CloudHandle, local_clouds, prepare_config,
                                wait_for_server)

EXAMPLE = os.path.join(os.path.dirname(cmd.__file__), "example.yaml")


def _two_providers(cloud_config):
    return {"clouds": [
        cloud_config("fast", password="fast-secret-pw"),
        cloud_config("flaky", password="flaky-secret-pw", region="DFW",
                     faults={"api-latency": 0.01}),
    ]}


def test_subprocess_fixture_two_providers(make_clouds, cloud_config, capsys,
                                          ssh_key):
    lc = make_clouds(_two_providers(cloud_config), subprocess=True)
    assert lc.names == ["fast", "flaky"]
    with open(lc.clouds_yaml) as f:
        entries = yaml.safe_load(f)["clouds"]
    flaky = entries["flaky"]
    assert flaky["region_name"] == "DFW"
    assert set(flaky["auth"]) == {"auth_url", "username", "password",
                                  "project_name", "user_domain_name",
                                  "project_domain_name"}
    assert flaky["auth"]["password"] == "flaky-secret-pw"
    ports = {name: info["api_port"]
             for name, info in lc.ready_info["clouds"].items()}
    assert entries["fast"]["auth"]["auth_url"] == \
        "http://127.0.0.1:%d/identity" % ports["fast"]

    assert cmd.main(["faults", "--admin", lc.admin_url, "flaky",
                     "boot-error-rate=1", "quota.instances=3",
                     "boot-delay={min: 0, max: 0.1}"]) == 0
    knobs = json.loads(capsys.readouterr().out)
    assert knobs["boot-error-rate"] == 1.0
    assert knobs["quota"]["instances"] == 3
    assert knobs["boot-delay"] == {"min": 0.0, "max": 0.1}

    results = {}
    for name in ("fast", "flaky"):
        nova = lc[name].nova("2.1")
        nova.keypairs.create("k", public_key=ssh_key.public)
        (image,) = lc[name].glance().images.list(
            filters={"name": "Ubuntu 12.04 LTS"})
        server = nova.servers.create("node", image.id, "1", key_name="k")
        results[name] = wait_for_server(nova, server.id).status
    assert results == {"fast": "ACTIVE", "flaky": "ERROR"}

    assert cmd.main(["stats", "--admin", lc.admin_url, "flaky"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["calls"]["POST /compute/v2.1/servers"] == 1
    assert stats["events"]["servers-error"] == 1
    assert cmd.main(["faults", "--admin", lc.admin_url, "flaky",
                     "no-such-knob=1"]) == 1
    assert "no-such-knob: unknown fault knob" in capsys.readouterr().err


def test_run_stops_on_sigterm_and_removes_its_state(tmp_path, cloud_config,
                                                    ssh_key):
    config = prepare_config(_two_providers(cloud_config))
    config_path = tmp_path / "clouds-local.yaml"
    config_path.write_text(yaml.safe_dump(config))
    state = tmp_path / "state"
    ready = tmp_path / "ready.json"
    clouds_yaml = tmp_path / "clouds.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcloud.cmd", "run", "--config",
         str(config_path), "--clouds-yaml", str(clouds_yaml), "--state-dir",
         str(state), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert set(info["clouds"]) == {"fast", "flaky"}
        assert info["admin_url"].startswith("http://127.0.0.1:")
        private_dir = info["state_dir"]
        assert private_dir.startswith(str(state))
        assert oct(os.stat(clouds_yaml).st_mode & 0o777) == "0o600"

        # boot a node so that there is a root and a NodeHost to tear down
        entry = yaml.safe_load(clouds_yaml.read_text())["clouds"]["fast"]
        fast = CloudHandle("fast", entry, AdminClient(info["admin_url"],
                                                      "fast"))
        nova = fast.nova("2.1")
        nova.keypairs.create("k", public_key=ssh_key.public)
        image = next(iter(fast.glance().images.list()))
        server = wait_for_server(nova, nova.servers.create(
            "node", image.id, "1", key_name="k").id)
        (record,) = fast.servers()
        assert os.path.isdir(record["root"])
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert not os.path.exists(private_dir)
    assert not ready.exists()
    assert clouds_yaml.exists()
    assert "stopped, all nodes deleted" in output
    assert "server %s" % server.id in output           # one line per event
    for secret in ("fast-secret-pw", "flaky-secret-pw"):
        assert secret not in output
    assert "X-Subject-Token" not in output


def test_example_config_is_valid():
    cfg = config.load(EXAMPLE)
    assert [c.name for c in cfg.clouds] == ["fast", "flaky"]
    assert cfg.cloud("flaky").faults["boot-error-rate"] > 0


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clouds:\n  - name: x\n    faults: {boot-error-rate: 3}\n")
    assert cmd.main(["run", "--config", str(bad), "--clouds-yaml",
                     str(tmp_path / "out.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "devstack-localcloud: error: %s: clouds[x].faults.boot-error-rate: "
        "expected a probability between 0 and 1, got 3.0" % bad)
    assert not (tmp_path / "out.yaml").exists()


def test_admin_commands_report_an_unreachable_endpoint(capsys):
    assert cmd.main(["stats", "--admin", "http://127.0.0.1:9", "x"]) == 1
    assert "cannot reach the admin endpoint" in capsys.readouterr().err


def test_parse_assignments():
    assert cmd.parse_assignments(["outage=true", "quota.instances=4",
                                  "quota.cores=null", "api-latency=0.5",
                                  "boot-delay={min: 1, max: 2}"]) == {
        "outage": True, "quota": {"instances": 4, "cores": None},
        "api-latency": 0.5, "boot-delay": {"min": 1, "max": 2}}


def test_busy_api_port_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text("clouds:\n  - name: busy\n    port: %d\n" % port)
        assert cmd.main(["run", "--config", str(path), "--clouds-yaml",
                         str(tmp_path / "clouds.yaml")]) == 1
    assert capsys.readouterr().err == (
        "devstack-localcloud: error: cloud busy: cannot listen on "
        "127.0.0.1:%d: Address already in use\n" % port)


def test_in_process_fixture_from_a_yaml_file(tmp_path):
    (tmp_path / "images" / "precise" / "etc").mkdir(parents=True)
    (tmp_path / "images" / "precise" / "etc" / "issue").write_text("x\n")
    path = tmp_path / "local.yaml"
    path.write_text("clouds:\n  - name: yaml\n    images:\n"
                    "      - name: precise\n"
                    "        directory: images/precise\n")
    with local_clouds(str(path), tmp_dir=str(tmp_path)) as lc:
        assert lc["yaml"].admin_url == lc.admin_url
        (image,) = lc["yaml"].glance().images.list()
        assert image.name == "precise" and image.size == 2
        work = lc.work_dir
    # the seed directory is the user's: untouched by teardown
    assert (tmp_path / "images" / "precise" / "etc" / "issue").read_text() \
        == "x\n"
    assert not os.path.exists(work)
