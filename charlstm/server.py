"""The shared MLflow tracking server of a study spread over machines, started so that it lets
no one in by accident: bound to loopback it runs as MLflow ships it; bound to anything else it
runs MLflow's basic-auth app with a login from the environment or a file, or refuses to start.

Credentials are read once and never logged or printed. Workers pass theirs the same way: MLflow's
client reads ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, and charlstm sets them
from ``CHARLSTM_MLFLOW_CREDENTIALS`` (a file ``user:password``) when they are not set.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
import sys
from pathlib import Path

from charlstm.errors import ConfigError

CREDENTIALS_FILE = "CHARLSTM_MLFLOW_CREDENTIALS"  # a file holding user:password, mode 600
USER, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"  # MLflow's own


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_credentials(path: str | Path) -> tuple[str, str]:
    """``user:password`` from a file only its owner can read."""
    path = Path(path)
    try:
        mode, text = path.stat().st_mode, path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"credentials file {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"credentials file {path} is readable by others: chmod 600 {path}")
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"credentials file {path}: expected one line user:password")
    return user, password


def credentials(path: str | None = None) -> tuple[str, str] | None:
    """A login from ``path``, else ``CHARLSTM_MLFLOW_CREDENTIALS``'s file, else MLflow's two
    variables; None when none is given."""
    path = path or os.environ.get(CREDENTIALS_FILE)
    if path:
        return read_credentials(path)
    if os.environ.get(USER) and os.environ.get(PASSWORD):
        return os.environ[USER], os.environ[PASSWORD]
    return None


def use_credentials_file() -> None:
    """A charlstm process given ``CHARLSTM_MLFLOW_CREDENTIALS``: MLflow's client logs in with it."""
    if os.environ.get(CREDENTIALS_FILE) and not os.environ.get(USER):
        os.environ[USER], os.environ[PASSWORD] = read_credentials(os.environ[CREDENTIALS_FILE])


def server_command(host: str, port: int, backend: str, artifacts: str, workers: int = 2,
                   credentials_path: str | None = None, allowed_hosts: str | None = None,
                   ) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment, one line saying what it serves) for ``mlflow server``. Beyond
    loopback without a login: ``ConfigError``, nothing started. ``allowed_hosts``: the Host
    names workers reach it by, where not private addresses (MLflow's own DNS-rebinding guard)."""
    argv = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend,
            "--artifacts-destination", artifacts, "--serve-artifacts", "--host", host, "--port", str(port),
            "--workers", str(workers), *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]
    env = dict(os.environ)
    login = credentials(credentials_path)
    if login is None:
        if not loopback(host):
            raise ConfigError(
                f"refusing to serve every run and model on {host}:{port} to anyone who can reach it: give a login "
                f"({USER} and {PASSWORD}, or {CREDENTIALS_FILE}=FILE holding user:password), or bind 127.0.0.1")
        return argv, env, f"MLflow tracking server: http://{host}:{port} (loopback only, no login)"
    user, password = login
    if len(password) < 12:  # (MLflow's own rule, said here as one line rather than its traceback)
        raise ConfigError("the tracking server's password must be at least 12 characters")
    folder = Path(artifacts).resolve().parent / "mlflow-auth"  # its users, beside the artifacts
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ini = folder / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    # the admin login goes by environment, never into a file or onto the command line
    env.update({"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": user,
                "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(folder)})
    return [*argv, "--app-name", "basic-auth"], env, \
        f"MLflow tracking server: http://{host}:{port}, basic-auth (admin user {user}; every request needs a login)"


def _secret(folder: Path) -> str:
    """The key the auth app signs its CSRF tokens with: made once, kept (mode 600), so that a
    restarted server honours the forms its users already hold."""
    path = folder / "secret_key"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()
