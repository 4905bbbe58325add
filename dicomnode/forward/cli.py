"""``dicomnode deid lookup PSEUDONYM --user NAME``: who a pseudonym stands for, for an
operator of the console (``web.users_file``, role operator, password checked), audited.

Only what ``deidentification.store_mapping`` kept can be looked up: patient pseudonyms (the
Patient ID a research archive holds) and remapped Study or Series Instance UIDs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from sqlalchemy import select

from dicomnode.config import load_config
from dicomnode.storage import StorageLayout
from dicomnode.store import OperatorAction, create_schema, make_engine, session_factory, utcnow
from dicomnode.store.models import Pseudonym
from dicomnode.web.users import UsersError, read_users


def _lookup(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        users = read_users(config.web.users_file)
    except UsersError as exc:
        print(f"dicomnode deid lookup: {exc}", file=sys.stderr)
        return 2
    password = (sys.stdin.readline().rstrip("\r\n") if args.password_stdin
                else getpass.getpass(f"password for {args.user}: "))
    user = users.get(args.user)
    allowed = user is not None and user.role == "operator" and user.check(password)
    engine = make_engine(StorageLayout.of(config.storage).database_url,
                         fsync=config.storage.fsync)
    try:
        create_schema(engine)
        with session_factory(engine).begin() as session:
            rows = session.scalars(select(Pseudonym).where(
                Pseudonym.pseudonym == args.pseudonym)).all() if allowed else []
            session.add(OperatorAction(
                at=utcnow(), user=args.user, address="cli", action="deid-lookup",
                target=f"pseudonym:{args.pseudonym}"[:128],
                outcome="ok" if allowed and rows else "not-found" if allowed else "refused"))
            found = [{"kind": r.kind, "pseudonym": r.pseudonym, "original": r.original,
                      "profile": r.profile} for r in rows]
    finally:
        engine.dispose()
    if not allowed:
        print("dicomnode deid lookup: an operator's name and password are needed "
              "(web.users_file, role operator)", file=sys.stderr)
        return 3
    if not found:
        note = "" if config.deidentification.store_mapping else \
            " (deidentification.store_mapping is off: nothing is kept to re-identify)"
        print(f"no mapping for {args.pseudonym}{note}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for row in found:
            print(f"{row['kind']} {row['pseudonym']} = {row['original']} "
                  f"(profile {row['profile']})")
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    deid = subparsers.add_parser("deid", help="de-identification (research destinations)")
    sub = deid.add_subparsers(dest="deid_command", required=True)
    lookup = sub.add_parser("lookup", parents=[common],
                            help="re-identify a pseudonym (operators only, audited)")
    lookup.add_argument("pseudonym", help="a pseudonymous Patient ID, Study or Series UID")
    lookup.add_argument("--user", required=True, help="an operator of web.users_file")
    lookup.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    lookup.add_argument("--json", action="store_true")
    lookup.set_defaults(handler=_lookup)
