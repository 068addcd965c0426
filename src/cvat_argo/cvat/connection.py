"""The CVAT connection, taken as cvat-cli takes it, for every command and step: one settings object.

People who use CVAT already type cvat-cli's flags and variables, so the same ones work here:

=========================  ====================================================================
``--server-host HOST|URL``  ``CVAT_HOST``: ``host[:port]`` (https is tried) or ``http(s)://host[:port]``
``--server-port N``         a port for a host named without one
``--auth USER[:PASS]``      a user and password (without ``:PASS``: ``PASS`` as in cvat-cli, else
                            ``CVAT_PASSWORD``; never a prompt, steps run unattended)
(environment only)          ``CVAT_ACCESS_TOKEN`` (a personal access token), or ``CVAT_USERNAME``
                            and ``CVAT_PASSWORD``; ``--auth`` wins over both, as in cvat-cli
``--org SLUG``              ``CVAT_ORG``: the organization; ``--org ''`` is the personal workspace
``--ca-bundle FILE``        ``CVAT_CA_BUNDLE`` (a file, or the PEM text itself as a Secret gives it),
                            else ``REQUESTS_CA_BUNDLE``: the CAs that verify an https server
``--insecure``              ``CVAT_INSECURE=1``: no certificate check (self-signed servers), with a warning
=========================  ====================================================================

Flags win over the environment. :func:`resolve` checks everything it can without a request and
refuses in one line naming the flag or variable at fault, never echoing a password or token.
:meth:`CvatSettings.to_env` hands the resolved settings to stage processes, which resolve them again
from their environment; in a cluster that environment comes from the ``cvat-credentials`` Secret
(keys ``host``, ``token``, ``username``, ``password``, ``org``, ``ca-bundle``, ``insecure``).
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import CvatArgoError

HOST_ENV, TOKEN_ENV = "CVAT_HOST", "CVAT_ACCESS_TOKEN"
USERNAME_ENV, PASSWORD_ENV, CLI_PASSWORD_ENV = "CVAT_USERNAME", "CVAT_PASSWORD", "PASS"
ORG_ENV, CA_ENV, INSECURE_ENV = "CVAT_ORG", "CVAT_CA_BUNDLE", "CVAT_INSECURE"
REQUESTS_CA_ENV = "REQUESTS_CA_BUNDLE"
# Set for a stage whose CVAT_USERNAME/CVAT_PASSWORD came from --auth, so its messages name the flag typed.
AUTH_FLAG_ENV = "CVAT_ARGO_AUTH_FROM"
_AUTH_NAMED = "the --auth user and password"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_PEM = "-----BEGIN"
# CVAT's organization slugs: letters, digits, '-' and '_' (a Django slug).
_SLUG = re.compile(r"[A-Za-z0-9_-]*")
_CREDENTIALS_HINT = f"set {TOKEN_ENV}, or {USERNAME_ENV} and {PASSWORD_ENV} (or --auth USER with PASS)"


@dataclass(frozen=True)
class CvatSettings:
    """One CVAT server and how to reach it; ``named`` says where each setting came from, for messages."""

    url: str  # scheme://host[:port], as the SDK is given it
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    org: str | None = None  # None: no organization context; "": the personal workspace
    ca_bundle: str | None = field(default=None, repr=False)  # a file, or PEM text
    insecure: bool = False
    named: Mapping[str, str] = field(default_factory=dict, repr=False)

    def to_env(self) -> dict[str, str | None]:
        """The variables a stage process resolves the same settings from (None: remove the variable).

        ``--auth`` replaces a token in the environment, as it does in cvat-cli, so the stages see only
        the credentials the command chose.
        """
        return {HOST_ENV: self.url, TOKEN_ENV: self.token, USERNAME_ENV: self.username,
                PASSWORD_ENV: self.password, ORG_ENV: self.org,
                CA_ENV: self.ca_bundle, INSECURE_ENV: "1" if self.insecure else None,
                AUTH_FLAG_ENV: "--auth" if self.named.get("credentials") == _AUTH_NAMED else None}

    def connect(self, needs: str = "a live CVAT task") -> Any:
        """A logged-in cvat-sdk ``Client`` with the organization and TLS settings applied.

        The SDK's server-version check is off: cvat-sdk 2.80 refuses older servers outright, while the
        few endpoints used here have been stable for years (their answers are read leniently).
        """
        from .server import readable_error

        try:
            from cvat_sdk import Client
            from cvat_sdk.api_client.rest import RESTClientObject
            from cvat_sdk.core.client import AccessTokenCredentials, Config, PasswordCredentials
        except ImportError:
            raise CvatArgoError(f"{needs} needs cvat-sdk: pip install 'cvat-argo[cvat]'") from None
        if self.insecure and self.url.startswith("https://"):
            _warn_insecure(self.url)
        try:
            client = Client(self.url, config=Config(verify_ssl=not self.insecure), check_server_version=False)
            if self.ca_bundle and not self.insecure:
                configuration = client.api_client.configuration
                pem = self.ca_bundle.lstrip().startswith(_PEM)
                configuration.ssl_ca_cert = None if pem else self.ca_bundle
                # the SDK builds its HTTP pool when the client is made: rebuild it with the CA bundle
                client.api_client.rest_client = RESTClientObject(configuration)
                if pem:  # PEM text (from a Secret): urllib3 takes it without a file
                    client.api_client.rest_client.pool_manager.connection_pool_kw["ca_cert_data"] = self.ca_bundle
            if self.org is not None:
                client.organization_slug = self.org  # the X-Organization header on every request
            client.login(AccessTokenCredentials(self.token) if self.token
                         else PasswordCredentials(self.username or "", self.password or ""))
            return client
        except Exception as exc:
            if getattr(exc, "status", None) == 400:  # CVAT's answer to a wrong user name or password
                raise CvatArgoError(f"CVAT at {self.url} refused the login (HTTP 400): check "
                                    f"{self.named.get('credentials', f'{USERNAME_ENV} and {PASSWORD_ENV}')}") from None
            raise readable_error(exc, self.url, "login") from None


def add_flags(parser: argparse.ArgumentParser) -> None:
    """cvat-cli's connection flags (and ours for TLS), as one group of ``parser``."""
    group = parser.add_argument_group("CVAT server (as cvat-cli; default: the CVAT_* variables)")
    group.add_argument("--server-host", metavar="HOST|URL",
                       help=f"host[:port] (https) or http(s)://host[:port] (default: ${HOST_ENV})")
    group.add_argument("--server-port", metavar="PORT", help="port, for a host given without one")
    group.add_argument("--auth", metavar="USER[:PASS]",
                       help=f"user and password; without :PASS the password comes from $PASS or ${PASSWORD_ENV} "
                            f"(default: ${TOKEN_ENV}, or ${USERNAME_ENV} and ${PASSWORD_ENV})")
    group.add_argument("--org", "--organization", dest="org", metavar="SLUG",
                       help=f"the organization's short name; '' is the personal workspace (default: ${ORG_ENV})")
    group.add_argument("--ca-bundle", metavar="FILE",
                       help=f"CA certificates (PEM) that verify the server (default: ${CA_ENV}, "
                            f"${REQUESTS_CA_ENV}, the system's)")
    group.add_argument("--insecure", action="store_true",
                       help=f"do not verify the server's certificate (a self-signed server; ${INSECURE_ENV}=1)")


def given(ns: argparse.Namespace) -> bool:
    """Whether any connection flag was given on the command line."""
    return any(getattr(ns, name, None) not in (None, False)
               for name in ("server_host", "server_port", "auth", "org", "ca_bundle", "insecure"))


def from_namespace(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> CvatSettings | None:
    """The settings of parsed :func:`add_flags` flags laid over ``env`` (see :func:`resolve`)."""
    return resolve(env, server_host=ns.server_host, server_port=ns.server_port, auth=ns.auth, org=ns.org,
                   ca_bundle=ns.ca_bundle, insecure=ns.insecure)


def resolve(env: Mapping[str, str] | None = None, *, server_host: str | None = None,
            server_port: str | int | None = None, auth: str | None = None, org: str | None = None,
            ca_bundle: str | None = None, insecure: bool = False) -> CvatSettings | None:
    """The connection the flags and ``env`` describe, checked; None when neither names a server."""
    env = os.environ if env is None else env
    named: dict[str, str] = {}
    host_name = "--server-host" if server_host is not None else HOST_ENV
    host = (server_host if server_host is not None else env.get(HOST_ENV) or "").strip()
    if server_port not in (None, ""):
        if not host:
            raise CvatArgoError(f"--server-port {server_port}: give the host too (--server-host or {HOST_ENV})")
        host = _with_port(host, host_name, str(server_port))
        host_name = f"{host_name} with --server-port"
    if not host:
        if server_host is not None:
            raise CvatArgoError("--server-host is empty: give host[:port] or http(s)://host[:port]")
        return None
    check_host(host, host_name)
    url = (host if "://" in host else f"https://{host}").rstrip("/")
    named["host"] = host_name

    token = username = password = None
    if auth is not None:
        username, sep, password = auth.partition(":")
        if not username:
            raise CvatArgoError("--auth needs a user name: --auth USER (password from $PASS or "
                                f"${PASSWORD_ENV}) or --auth USER:PASS")
        password = password if sep and password else env.get(CLI_PASSWORD_ENV) or env.get(PASSWORD_ENV)
        if not password:
            raise CvatArgoError(f"--auth {username}: no password: set PASS or {PASSWORD_ENV} (or give "
                                "--auth USER:PASS, which other users of this machine can see)")
        named["credentials"] = _AUTH_NAMED
    elif env.get(TOKEN_ENV):
        token = env[TOKEN_ENV]
        named["credentials"] = TOKEN_ENV
    elif env.get(USERNAME_ENV) and env.get(PASSWORD_ENV):
        username, password = env[USERNAME_ENV], env[PASSWORD_ENV]
        from_flag = env.get(AUTH_FLAG_ENV) == "--auth"
        named["credentials"] = _AUTH_NAMED if from_flag else f"{USERNAME_ENV} and {PASSWORD_ENV}"
    else:
        missing = (f"{USERNAME_ENV} is set without {PASSWORD_ENV}" if env.get(USERNAME_ENV)
                   else f"{PASSWORD_ENV} is set without {USERNAME_ENV}" if env.get(PASSWORD_ENV) else "")
        raise CvatArgoError(f"no CVAT credentials for {url}{f' ({missing})' if missing else ''}: "
                            f"{_CREDENTIALS_HINT}")

    org_name = "--org" if org is not None else ORG_ENV
    org = org if org is not None else (env.get(ORG_ENV) or None)  # an empty variable is no setting
    if org is not None:
        org = org.strip()
        if not _SLUG.fullmatch(org):
            raise CvatArgoError(f"{org_name} {org!r} is not an organization's short name (letters, digits, "
                                "'-' and '_'; '' for the personal workspace)")

    insecure_name = "--insecure"
    if not insecure:
        value = (env.get(INSECURE_ENV) or "").strip().lower()
        if value not in _TRUE + _FALSE:
            raise CvatArgoError(f"{INSECURE_ENV}={value!r}: give 1 (do not verify the certificate) or 0")
        insecure, insecure_name = value in _TRUE, f"{INSECURE_ENV}=1"

    ca_name, ca = "--ca-bundle", ca_bundle
    for variable in (CA_ENV, REQUESTS_CA_ENV):
        if ca is None and env.get(variable, "").strip():
            ca_name, ca = variable, env[variable]
    if ca is not None:
        if insecure and ca_bundle is not None:
            raise CvatArgoError(f"--ca-bundle and {insecure_name}: give one (a CA verifies the server; "
                                f"{insecure_name} skips the check)")
        ca = None if insecure else _checked_ca(ca, ca_name)
    return CvatSettings(url=url, token=token, username=username, password=password, org=org, ca_bundle=ca,
                        insecure=insecure, named=named)


def require(env: Mapping[str, str] | None = None) -> CvatSettings:
    """The settings in ``env``, refusing an environment that names no server."""
    settings = resolve(env)
    if settings is None:
        raise CvatArgoError(f"no CVAT server: set {HOST_ENV} (and {TOKEN_ENV}, or {USERNAME_ENV} and "
                            f"{PASSWORD_ENV}), or give --server-host")
    return settings


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` names a CVAT server at all (a step without one skips its upload)."""
    env = os.environ if env is None else env
    return bool((env.get(HOST_ENV) or "").strip())


def check_host(host: str, named: str = HOST_ENV) -> None:
    """``host[:port]`` (https is tried) or an http(s):// URL; anything else is refused now.

    Credentials inside the address (``user:pass@host``) are refused without echoing the address: they
    would end up in logs, reports and the ledger's key.
    """
    url = urlsplit(host if "://" in host else f"https://{host}")
    if "@" in url.netloc:
        raise CvatArgoError(f"{named} holds credentials (user:password@host): give the bare address and set "
                            f"{TOKEN_ENV}, or {USERNAME_ENV} and {PASSWORD_ENV} (or --auth USER)")
    try:
        port_ok = url.port is None or 0 < url.port < 65536
    except ValueError:
        port_ok = False
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok or any(c.isspace() for c in host):
        raise CvatArgoError(f"{named} {host!r} is not a server address: use host[:port] or http(s)://host[:port]")


def _with_port(host: str, named: str, port: str) -> str:
    """``host`` with ``--server-port``; a host that names its own port too is refused (cvat-cli's rule)."""
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise CvatArgoError(f"--server-port {port!r} is not a port: give 1 to 65535")
    try:
        has_port = urlsplit(host if "://" in host else f"https://{host}").port is not None
    except ValueError:
        has_port = True
    if has_port:
        raise CvatArgoError(f"--server-port {port} and {named}, which names a port too: give only one port")
    return f"{host.rstrip('/')}:{int(port)}"


def _checked_ca(value: str, named: str) -> str:
    """A CA bundle that loads, as a readable file or as PEM text; refused in one line otherwise."""
    pem = value.lstrip().startswith(_PEM)
    try:
        if pem:
            ssl.create_default_context(cadata=value)
            return value
        path = Path(value).expanduser()
        if not path.is_file():
            raise CvatArgoError(f"{named} {value}: no such file (give a PEM file of CA certificates)")
        ssl.create_default_context(cafile=str(path))
        return str(path.absolute())
    except (ssl.SSLError, ValueError):  # before OSError, which SSLError is
        shown = "(PEM text)" if pem else value
        raise CvatArgoError(f"{named} {shown}: holds no CA certificate in PEM form") from None
    except OSError as exc:
        raise CvatArgoError(f"{named} {value}: {exc.strerror or exc}") from None


_warned: set[str] = set()


def _warn_insecure(url: str) -> None:
    """One line per server, not urllib3's warning on every request: the choice was the person's."""
    import warnings

    from urllib3.exceptions import InsecureRequestWarning

    warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    if url not in _warned:
        _warned.add(url)
        print(f"warning: CVAT at {url}: the server's certificate is not verified (--insecure or {INSECURE_ENV}=1)",
              file=sys.stderr)
