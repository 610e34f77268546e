"""CLI bodies of `faultline alert add|list|test|remove`, acting on the stack running here (faultline/stackfile.py)
or on explicit FAULTLINE_DATABASE_URL, like `faultline project`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson
from pydantic import ValidationError

from core.alerts import rules
from core.alerts.deliver import Sender, send_test
from core.alerts.urls import UnsafeUrl, check_url
from core.db import repo
from core.db.engine import make_engine
from core.settings import Settings
from faultline.projects import _in_db
from faultline.stackfile import cli_settings


async def _project_id(conn: Any, ref: str) -> int:
    pid = int(ref) if ref.isdigit() else await repo.project_id(conn, ref)
    known = {p for p, *_ in await repo.list_projects(conn)}
    if pid is None or pid not in known:
        raise SystemExit(f"no project {ref!r} (see `faultline project list`)")
    return pid


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    async def create(conn: Any) -> dict[str, Any]:
        try:
            rule = rules.RuleIn(project_id=await _project_id(conn, args.project), kind=args.kind, url=args.url,
                                format=args.format, name=args.name or "", threshold=args.threshold,
                                window_minutes=args.window, cooldown=args.cooldown)
        except ValidationError as exc:
            raise SystemExit("; ".join(f"{'.'.join(map(str, e['loc'])) or 'rule'}: {e['msg']}"
                                       for e in exc.errors())) from None
        try:
            await check_url(rule.url, settings.alert_allow_private_urls)
        except UnsafeUrl as exc:
            raise SystemExit(f"--url: {exc}") from None
        return await rules.create(conn, rule, settings.alert_cooldown)

    created = await _in_db(settings, create)
    print(f"rule {created['id']} created; signing secret (shown once): {created['secret']}", file=sys.stderr)
    print(created["secret"])  # stdout: the secret alone, for scripts
    return 0


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    async def read(conn: Any) -> list[Any]:
        pid = await _project_id(conn, args.project) if args.project else None
        return await rules.all_rules(conn, pid)

    rows = await _in_db(settings, read)
    print(f"{'id':>4}  {'project':>7}  {'kind':<10} {'format':<6} {'cooldown':>8}  {'created':<20} url")
    for r in rows:
        extra = f" (>= {r.threshold} in {r.window_minutes} min)" if r.kind == "threshold" else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at))
        print(f"{r.id:>4}  {r.project_id:>7}  {r.kind:<10} {r.format:<6} {r.cooldown:>7g}s  {when:<20} {r.url}{extra}")
    return 0


async def _test(args: argparse.Namespace, settings: Settings) -> int:
    rule = await _in_db(settings, lambda conn: rules.get(conn, args.id))
    if rule is None:
        raise SystemExit(f"no alert rule {args.id} (see `faultline alert list`)")
    engine = make_engine(settings)
    sender = Sender(settings.alert_timeout, settings.alert_allow_private_urls)
    try:
        alert, result = await send_test(engine, rule, sender)
    finally:
        await sender.close()
        await engine.dispose()
    print(orjson.dumps({"delivery_id": alert["delivery_id"], "ok": result.ok, "status_code": result.status_code,
                        "error": result.error, "latency_ms": result.latency_ms}).decode())
    return 0 if result.ok else 1


async def _remove(args: argparse.Namespace, settings: Settings) -> int:
    if not await _in_db(settings, lambda conn: rules.remove(conn, args.id)):
        raise SystemExit(f"no alert rule {args.id} (see `faultline alert list`)")
    print(f"removed alert rule {args.id}")
    return 0


def run(args: argparse.Namespace) -> int:
    body = {"add": _add, "list": _list, "test": _test, "remove": _remove}[args.action]
    return asyncio.run(body(args, cli_settings()))


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    alert = sub.add_parser("alert", help="alert rules: webhooks for new groups, regressions, spikes, thresholds")
    asub = alert.add_subparsers(dest="action", required=True, parser_class=parser_class)
    add = asub.add_parser("add", help="add a rule and print its signing secret (shown once)")
    add.add_argument("--project", required=True, help="project name or id")
    add.add_argument("--kind", required=True, choices=rules.KINDS, help="what fires the rule")
    add.add_argument("--url", required=True, help="webhook URL (http/https; private addresses refused unless "
                                                  "FAULTLINE_ALERT_ALLOW_PRIVATE_URLS=true)")
    add.add_argument("--format", choices=rules.FORMATS, default="json", help="generic JSON or a Slack payload")
    add.add_argument("--threshold", type=int, default=None, help="threshold rules: N events ...")
    add.add_argument("--window", type=int, default=None, help="threshold rules: ... in M minutes (1-1440)")
    add.add_argument("--cooldown", type=float, default=None, help="seconds of silence per group after an "
                     "alert; None = FAULTLINE_ALERT_COOLDOWN")
    add.add_argument("--name", default=None, help="a name to tell rules apart; None = kind and URL")
    lst = asub.add_parser("list", help="every rule (secrets are never shown again)")
    lst.add_argument("--project", default=None, help="only this project's rules (name or id)")
    test = asub.add_parser("test", help="send one signed test delivery now; exit 1 if the receiver refused it")
    test.add_argument("id", type=int, help="rule id (from `alert list`)")
    remove = asub.add_parser("remove", help="delete a rule (queued deliveries for it are dropped)")
    remove.add_argument("id", type=int, help="rule id (from `alert list`)")
    for p in (add, lst, test, remove):
        p.set_defaults(func=lambda args: run(args))
