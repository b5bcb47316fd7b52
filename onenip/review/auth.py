"""Users, passwords, sessions and CSRF tokens of the review page.

Users live in a YAML file (``monitoring.users_file``) with a role and a scrypt hash of their password,
never the password. A session is a signed cookie (itsdangerous, a secret kept in the store) holding
the user, role and the CSRF token that every form must send back."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from itsdangerous import BadSignature, URLSafeTimedSerializer

ROLES = ("reviewer", "lead")
"""A reviewer labels predictions; a lead also applies labels to the data and sets thresholds."""
SESSION_SECONDS = 12 * 3600
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class AuthError(ValueError):
    """A user file or user that cannot be used (one line for the user)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_lead(self) -> bool:
        return self.role == "lead"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    return hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored) and bool(digest)


def read_users(path: str | Path) -> dict[str, dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        users = (yaml.safe_load(path.read_text()) or {}).get("users") or {}
    except yaml.YAMLError as error:
        msg = f"{path}: not a users file ({error})"
        raise AuthError(msg) from None
    for name, entry in users.items():
        if not isinstance(entry, dict) or entry.get("role") not in ROLES or "password" not in entry:
            msg = f"{path}: user {name!r} needs a role ({' or '.join(ROLES)}) and a password hash (onenip review add-user)"
            raise AuthError(msg)
    return users


def add_user(path: str | Path, name: str, role: str, password: str) -> None:
    """Add or replace a user (the file is written atomically, readable by its owner only)."""
    if role not in ROLES:
        msg = f"role must be one of {ROLES}, got {role!r}"
        raise AuthError(msg)
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        msg = f"user name {name!r}: letters, digits, '-', '_' and '.' only"
        raise AuthError(msg)
    if len(password) < 8:
        msg = "a password needs at least 8 characters"
        raise AuthError(msg)
    path = Path(path)
    users = read_users(path)
    users[name] = {"role": role, "password": hash_password(password)}
    tmp = path.with_name(path.name + ".tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(yaml.safe_dump({"users": users}, sort_keys=True))
    tmp.replace(path)


def authenticate(users: dict[str, dict[str, str]], name: str, password: str) -> User | None:
    entry = users.get(name)
    if entry is None:
        hash_password(password)  # the same work whether or not the user exists
        return None
    return User(name, entry["role"]) if verify_password(password, entry["password"]) else None


def session_secret(folder: str | Path) -> str:
    """The secret sessions are signed with, created once in ``folder`` (owner-readable only)."""
    path = Path(folder) / ".review-secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".review-secret.{os.getpid()}.tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even briefly
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        tmp.replace(path)
    return path.read_text().strip()


class Sessions:
    def __init__(self, secret: str) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="onenip-review")

    def issue(self, user: User) -> str:
        return self.serializer.dumps({"user": user.name, "role": user.role, "csrf": secrets.token_urlsafe(24)})

    def read(self, cookie: str | None) -> tuple[User, str] | None:
        """(user, CSRF token) of a valid, unexpired session cookie; None otherwise."""
        if not cookie:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        return User(data["user"], data["role"]), data["csrf"]


def csrf_ok(expected: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(expected.encode(), (sent or "").encode("utf-8", "replace"))
