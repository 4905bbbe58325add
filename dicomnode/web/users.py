"""The console's users: ``web.users_file`` (YAML), bcrypt hashes, two roles.

::

    users:
      - name: alice
        password_hash: $2b$12$...      # bcrypt
        role: operator                 # viewer: read only; operator: also retry, cancel, echo

``dicomnode users add NAME --role operator`` writes it. The running node re-reads the file when
it changes, so adding a user needs no restart.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import bcrypt
import yaml

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = get_args(Role)
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class UsersError(Exception):
    """The users file cannot be read or a user cannot be added."""


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    role: Role

    def check(self, password: str) -> bool:
        try:
            return bcrypt.checkpw(password.encode("utf-8"), self.password_hash.encode("ascii"))
        except ValueError:  # not a bcrypt hash
            return False


def hash_password(password: str) -> str:
    if not password:
        raise UsersError("the password must not be empty")
    if len(password.encode("utf-8")) > 72:  # bcrypt reads 72 bytes at most
        raise UsersError("the password must be at most 72 bytes long")
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")


def read_users(path: Path | None) -> dict[str, User]:
    """The users of ``path`` by name (none when it is unset or does not exist yet)."""
    if path is None or not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsersError(f"cannot read the users file {path}: {exc}") from None
    entries = data.get("users") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UsersError(f"{path}: expected a mapping with a list 'users'")
    users: dict[str, User] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"name", "password_hash", "role"} <= set(entry):
            raise UsersError(f"{path}: users[{index}] needs name, password_hash and role")
        if entry["role"] not in ROLES:
            raise UsersError(f"{path}: users[{index}].role must be one of {', '.join(ROLES)}")
        users[str(entry["name"])] = User(str(entry["name"]), str(entry["password_hash"]),
                                         entry["role"])
    return users


def add_user(path: Path, name: str, password: str, role: Role) -> bool:
    """Add (or replace: True) the user ``name``; the file is replaced atomically, mode 0600."""
    if not _NAME.match(name):
        raise UsersError("a user name is 1 to 64 letters, digits or _ . @ -")
    if role not in ROLES:
        raise UsersError(f"role must be one of {', '.join(ROLES)}")
    users = read_users(path)
    replaced = name in users
    users[name] = User(name, hash_password(password), role)
    text = yaml.safe_dump({"users": [{"name": u.name, "password_hash": u.password_hash,
                                      "role": u.role} for u in users.values()]},
                          sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return replaced


class UserDirectory:
    """The users file as the running node sees it: re-read when its modification time or
    size changes."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def users(self) -> dict[str, User]:
        try:
            stat = self.path.stat() if self.path is not None else None
        except OSError:
            stat = None
        stamp = (stat.st_mtime_ns, stat.st_size) if stat else None
        with self._lock:
            if stamp != self._stamp:
                self._users = read_users(self.path) if stamp else {}
                self._stamp = stamp
            return self._users
