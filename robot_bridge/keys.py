"""CURVE key pairs for the bridge, in pyzmq's certificate format (`zmq.auth.create_certificates`).

`omniloop keys generate DIR` writes:

    DIR/server.key, DIR/server.key_secret    the robot's pair: the public half goes to every agent
    DIR/client.key, DIR/client.key_secret    an agent's pair: the secret half stays with the agent
    DIR/authorized_clients/client.key        the server's allow-list: a client is let in only if
                                             its public key is a file in this folder
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zmq
import zmq.auth

AUTHORIZED = "authorized_clients"


def server_secret_file(keys: Path) -> Path:
    path = Path(keys) / "server.key_secret"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --keys needs a folder made by `omniloop keys generate`")
    return path


def authorized_dir(keys: Path) -> Path:
    path = Path(keys) / AUTHORIZED
    if not path.is_dir() or not any(path.glob("*.key")):
        raise FileNotFoundError(f"{path} holds no client public keys (*.key): no agent could connect")
    return path


def generate(folder: Path, client_name: str = "client") -> dict[str, Path]:
    """Make a server pair and one client pair in `folder`, and allow that client. Existing files
    are never overwritten: a second client gets its own name."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE; install pyzmq from its wheels")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in ("server", client_name):
        public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
        if public.exists() or secret.exists():
            if name == "server":
                made["server"] = public
                continue
            raise FileExistsError(f"{public} exists: choose another client name")
        mask = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
        try:
            zmq.auth.create_certificates(str(folder), name)
        finally:
            os.umask(mask)
        secret.chmod(0o600)
        public.chmod(0o644)  # the public half is made to be shared
        made[name] = public
    allowed = folder / AUTHORIZED
    allowed.mkdir(exist_ok=True)
    shutil.copy(made[client_name], allowed / f"{client_name}.key")
    return made


def load_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a `.key_secret` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"key file {path} not found")
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ValueError(f"{path} holds no secret key: give the .key_secret file")
    return public, secret


def load_public(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"server key file {path} not found")
    public, _ = zmq.auth.load_certificate(str(path))
    return public
