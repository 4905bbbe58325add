"""``dicomnode users add NAME --role viewer|operator [--password-stdin]`` and ``users list``:
the console's users in ``web.users_file``."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from dicomnode.config import load_config
from dicomnode.web.users import ROLES, UsersError, add_user, read_users


def _users_file(args: argparse.Namespace) -> Path | None:
    config = load_config(args.config)
    if config.web.users_file is None:
        print("web.users_file is not set: name the users file in config.yaml first "
              "(e.g. users_file: users.yaml under web:)", file=sys.stderr)
        return None
    return config.web.users_file


def _add(args: argparse.Namespace) -> int:
    path = _users_file(args)
    if path is None:
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    try:
        replaced = add_user(path, args.name, password, args.role)
    except UsersError as exc:
        print(f"dicomnode users add: {exc}", file=sys.stderr)
        return 1
    print(f"{'replaced' if replaced else 'added'} {args.role} {args.name} in {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    path = _users_file(args)
    if path is None:
        return 2
    try:
        users = read_users(path)
    except UsersError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for user in users.values():
        print(f"{user.name}\t{user.role}")
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    users = subparsers.add_parser("users", help="the operator console's users")
    sub = users.add_subparsers(dest="users_command", required=True)
    add = sub.add_parser("add", parents=[common],
                         help="add a user (or set a user's password and role)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="viewer",
                     help="viewer: read only; operator: also retry, cancel and echo")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.set_defaults(handler=_add)
    listing = sub.add_parser("list", parents=[common], help="user names and roles")
    listing.set_defaults(handler=_list)
