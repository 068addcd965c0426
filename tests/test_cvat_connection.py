"""The CVAT connection as cvat-cli users give it: flags over CVAT_* variables, organizations, TLS.

Checked against the fake CVAT server on loopback (plain and https with a throwaway CA), through the
same ``connect`` every command and step uses; what the flags resolve to must reach the stages
unchanged through their environment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cvat_argo.cvat import connection
from cvat_argo.cvat.server import connect, lenient_json
from cvat_argo.engines import preflight
from cvat_argo.errors import CvatArgoError
from support.fake_cvat_server import PASSWORD, TOKEN, USERNAME, FakeTask, cvat_server, label


def _task(organization: str | None = None) -> FakeTask:
    return FakeTask(7, labels=[label(1, "car", "rectangle")], frames=[{"name": "a.jpg", "width": 8, "height": 6}],
                    organization=organization)


def _labels(client) -> int:
    return lenient_json(client.api_client.labels_api.list, task_id=7)["count"]


# ------------------------------------------------------------------------------------ resolving


def test_flags_win_over_the_environment_and_reach_the_stages_unchanged(tmp_path: Path):
    env = {"CVAT_HOST": "cvat.from-env.example", "CVAT_ACCESS_TOKEN": "env-token", "CVAT_ORG": "env-org"}
    with pytest.raises(CvatArgoError, match="--auth alice: no password: set PASS or CVAT_PASSWORD"):
        connection.resolve(env, server_host="http://cvat.example", auth="alice")
    settings = connection.resolve({**env, "PASS": "pw-from-pass"}, server_host="http://cvat.example",
                                  server_port="8080", auth="alice", org="")
    assert (settings.url, settings.username, settings.password, settings.token, settings.org) == (
        "http://cvat.example:8080", "alice", "pw-from-pass", None, "")  # --auth replaces the token, as in cvat-cli
    stage_env = {k: v for k, v in {**env, **settings.to_env()}.items() if v is not None}
    assert "CVAT_ACCESS_TOKEN" not in stage_env
    again = connection.resolve(stage_env)
    assert (again.url, again.username, again.password, again.token, again.org, again.insecure) == (
        settings.url, "alice", "pw-from-pass", None, None, False)  # "" in a variable is no setting
    assert "pw-from-pass" not in repr(settings)

    bare = connection.resolve({"CVAT_HOST": "cvat.example:8443", "CVAT_USERNAME": "bob", "CVAT_PASSWORD": "pw",
                               "CVAT_ORG": "acme", "CVAT_INSECURE": "1"})
    assert (bare.url, bare.username, bare.org, bare.insecure) == ("https://cvat.example:8443", "bob", "acme", True)
    assert connection.resolve({"CVAT_HOST": "h", "CVAT_ACCESS_TOKEN": "t"}, auth="carol:pw").password == "pw"
    assert connection.resolve({}) is None


@pytest.mark.parametrize(("flags", "env", "named"), [
    ({"server_host": "http://a.example:80", "server_port": "81"}, {}, "--server-port 81 and --server-host"),
    ({"server_host": "a.example", "server_port": "99999"}, {}, "--server-port '99999' is not a port"),
    ({"server_port": "8080"}, {"CVAT_HOST": ""}, "--server-port 8080: give the host too"),
    ({"server_host": "not a host"}, {}, "--server-host 'not a host' is not a server address"),
    ({"server_host": ""}, {}, "--server-host is empty"),
    ({"server_host": "https://me:s3cret-pw@a.example"}, {}, "--server-host holds credentials"),
    ({"auth": ":s3cret-pw"}, {}, "--auth needs a user name"),
    ({"org": "acme corp"}, {}, "--org 'acme corp' is not an organization's short name"),
    ({}, {"CVAT_ORG": "a/b"}, "CVAT_ORG 'a/b'"),
    ({}, {"CVAT_INSECURE": "maybe"}, "CVAT_INSECURE='maybe'"),
    ({"ca_bundle": "/nonexistent/ca.pem"}, {}, "--ca-bundle /nonexistent/ca.pem: no such file"),
    ({}, {"CVAT_CA_BUNDLE": "/nonexistent/ca.pem"}, "CVAT_CA_BUNDLE /nonexistent/ca.pem: no such file"),
    ({}, {"REQUESTS_CA_BUNDLE": "/nonexistent/ca.pem"}, "REQUESTS_CA_BUNDLE /nonexistent/ca.pem"),
    ({}, {"CVAT_CA_BUNDLE": "-----BEGIN CERTIFICATE-----\ns3cret-pw\n-----END CERTIFICATE-----\n"},
     "CVAT_CA_BUNDLE (PEM text): holds no CA certificate"),
    ({"ca_bundle": "NOTES", "insecure": True}, {}, "--ca-bundle and --insecure: give one"),
    ({}, {"CVAT_USERNAME": "bob"}, "CVAT_USERNAME is set without CVAT_PASSWORD"),
], ids=["two-ports", "bad-port", "port-without-host", "bad-host", "empty-host", "credentials-in-host",
        "auth-without-user", "bad-org", "bad-org-variable", "bad-insecure-variable", "missing-ca", "missing-ca-variable",
        "missing-requests-ca", "junk-pem", "ca-and-insecure", "user-without-password"])
def test_bad_settings_are_one_line_naming_the_flag_or_variable(tmp_path: Path, flags, env, named):
    (tmp_path / "NOTES").write_text("not a certificate\n")
    flags = {k: (str(tmp_path / v) if v == "NOTES" else v) for k, v in flags.items()}
    base = {"CVAT_HOST": "cvat.example", "CVAT_ACCESS_TOKEN": "s3cret-token"} if "CVAT_USERNAME" not in env else {
        "CVAT_HOST": "cvat.example"}
    with pytest.raises(CvatArgoError) as error:
        connection.resolve({**base, **env}, **flags)
    text = str(error.value)
    assert named in text and "\n" not in text
    assert "s3cret" not in text  # neither a password nor a token is echoed


def test_a_ca_bundle_that_is_not_pem_is_refused(tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a certificate\n")
    with pytest.raises(CvatArgoError, match=r"--ca-bundle .*notes.txt: holds no CA certificate in PEM form"):
        connection.resolve({"CVAT_HOST": "h", "CVAT_ACCESS_TOKEN": "t"}, ca_bundle=str(notes))


# ------------------------------------------------------------------------------- organizations


def test_the_organization_goes_with_every_request_and_scopes_the_lists():
    task = _task(organization="acme")
    with cvat_server(task) as env:
        client = connect({**env, "CVAT_ORG": "acme"})
        assert _labels(client) == 1
        assert set(task.org_contexts) == {"acme"}
        # outside the organization's context the lists a member reads are empty, as CVAT filters them
        assert _labels(connect(env)) == 0
        logged_in = connection.resolve({"CVAT_HOST": env["CVAT_HOST"], "PASS": PASSWORD}, auth=USERNAME,
                                       org="acme").connect()
        assert _labels(logged_in) == 1 and task.org_contexts[-1] == "acme"


def test_an_organization_the_server_lacks_is_one_line_naming_the_flag():
    with cvat_server(_task()) as env, pytest.raises(CvatArgoError) as error:
        preflight.check_cvat_task(7, {**env, "CVAT_ORG": "nope"})
    text = str(error.value)
    assert text.startswith("--task-id 7") and "no such organization (HTTP 404)" in text and "--org" in text
    assert "\n" not in text and TOKEN not in text


# ------------------------------------------------------------------------------------------ TLS


def test_a_self_signed_server_needs_its_ca_or_insecure(tmp_path: Path, capsys):
    task = _task()
    with cvat_server(task, tls_dir=tmp_path / "tls") as env:
        assert env["CVAT_HOST"].startswith("https://")
        ca = tmp_path / "tls" / "ca.pem"
        with pytest.raises(CvatArgoError) as error:
            preflight.check_cvat_task(7, env)
        text = str(error.value)
        assert "CERTIFICATE_VERIFY_FAILED" in text and "--ca-bundle" in text and "--insecure" in text
        assert "\n" not in text and TOKEN not in text
        bare = env["CVAT_HOST"].removeprefix("https://")  # host:port is tried over https, as before
        assert _labels(connect({**env, "CVAT_HOST": bare, "CVAT_CA_BUNDLE": str(ca)})) == 1
        assert _labels(connect({**env, "CVAT_CA_BUNDLE": ca.read_text()})) == 1  # the PEM text, as a Secret holds it
        assert _labels(connect({**env, "REQUESTS_CA_BUNDLE": str(ca)})) == 1
        flags = connection.resolve({"PASS": PASSWORD}, server_host=env["CVAT_HOST"], auth=USERNAME,
                                   ca_bundle=str(ca))
        assert _labels(flags.connect()) == 1  # a password login over the verified connection
        capsys.readouterr()
        assert _labels(connect({**env, "CVAT_INSECURE": "1"})) == 1
        warned = capsys.readouterr().err
        assert warned.count("\n") == 1 and "not verified (--insecure or CVAT_INSECURE=1)" in warned
        insecure = connection.resolve({"CVAT_ACCESS_TOKEN": TOKEN}, server_host=env["CVAT_HOST"], insecure=True)
        assert _labels(insecure.connect()) == 1
