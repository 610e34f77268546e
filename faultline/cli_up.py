"""`faultline up` (the whole local stack, supervised, in the foreground) and `faultline rollout`."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from core import access


def _adapt(handler: Callable[[], None]) -> Callable[[int, object], None]:
    def on_signal(_signum: int, _frame: object) -> None:
        handler()
    return on_signal


class Signals:
    """Signal -> handler table for `faultline up`: handlers only set events; the main loop acts on them."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.stop = threading.Event()
        self.rollout = threading.Event()
        self._on_stop = on_stop
        self.table: dict[int, Callable[[], None]] = {
            signal.SIGINT: self.request_stop,
            signal.SIGTERM: self.request_stop,
            signal.SIGHUP: self.rollout.set,  # sent by `faultline rollout`
        }

    def request_stop(self) -> None:
        self.stop.set()
        self._on_stop()  # long steps (start-up waits, a rollout) give up at once

    def install(self) -> None:
        for signum, handler in self.table.items():
            signal.signal(signum, _adapt(handler))


def cmd_up(args: argparse.Namespace) -> int:
    from faultline import rollout_request, stackfile
    from faultline.bootstrap import StartRefused
    from faultline.stack import Cancelled, Stack, StackConfig

    data = stackfile.data_dir()
    if stackfile.read(data) is not None:
        raise SystemExit(f"a `faultline up` is already running in {data.resolve()} (see `faultline status`)")
    creds = load_credentials(data / "credentials.env")
    admin = os.environ.get("FAULTLINE_ADMIN_TOKEN") or creds.get("FAULTLINE_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    key = os.environ.get("FAULTLINE_INGEST_KEY") or creds.get("FAULTLINE_INGEST_KEY") or access.new_ingest_key()
    # Store passwords: kept across runs (the MariaDB user is re-keyed at each start if they change).
    redis_pw = creds.get("FAULTLINE_REDIS_PASSWORD") or secrets.token_urlsafe(24)
    db_pw = creds.get("FAULTLINE_DB_PASSWORD") or secrets.token_urlsafe(24)
    stack = Stack(StackConfig(base_dir=data.resolve(), nodes=args.nodes, port=args.port, workers=args.workers,
                              db=args.db, admin_token=admin, ingest_key=key, redis_password=redis_pw,
                              db_password=db_pw, redis=args.redis,
                              env={"FAULTLINE_RATE_LIMIT_ENABLED": "false"} if args.no_rate_limit else {}))
    signals = Signals(stack.cancel.set)
    signals.install()
    try:
        stack.start()
    except (Cancelled, InterruptedError):
        stack.stop()
        return 0
    except StartRefused as refused:
        stack.stop()
        print(f"faultline up: {refused}", file=sys.stderr)
        return 2
    except BaseException:
        stack.stop()
        raise
    write_credentials(data / "credentials.env", {
        "FAULTLINE_ADMIN_TOKEN": stack.admin_token, "FAULTLINE_INGEST_KEY": stack.ingest_key,
        "FAULTLINE_URL": stack.url, "FAULTLINE_REDIS_PASSWORD": redis_pw, "FAULTLINE_DB_PASSWORD": db_pw})
    stackfile.write(data, stack)
    print(f"\nFaultline is up on {stack.url}  ({args.nodes} API nodes, {args.workers} workers, db={args.db})")
    limits = stack.settings()
    shown = "off"
    if limits.rate_limit_enabled:
        routes = len([r for r in limits.rate_limit_routes.split(";") if r.strip()])
        shown = (f"{limits.rate_limits} per client on {routes} routes (FAULTLINE_RATE_LIMIT_ROUTES); project "
                 f"quota {limits.project_quota_per_second}/s, {limits.project_quota_per_minute}/min")
    print(f"  rate limits : {shown}   (`faultline up --no-rate-limit` turns them off)")
    print(f"  ingest key  : {stack.ingest_key}   (header X-Faultline-Key; checked through nginx)")
    print(f"  admin token : {stack.admin_token}   (Authorization: Bearer ...)")
    print(f"  saved to {data / 'credentials.env'} (mode 0600). Ctrl-C stops everything.\n", flush=True)
    rollout_request.write_pid(data)
    try:
        while not signals.stop.wait(0.5):
            if stack.supervise_once():
                stackfile.write(data, stack)
            if signals.rollout.is_set():
                signals.rollout.clear()
                rollout_request.run_requested(stack, data, on_done=lambda: stackfile.write(data, stack))
    finally:
        print("stopping...", flush=True)
        rollout_request.remove_pid(data)
        stackfile.remove(data)
        stack.stop()
    print("stopped", flush=True)
    return 0


def load_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip().removeprefix("export "): v.strip() for k, v in pairs}


def write_credentials(path: Path, values: dict[str, str]) -> None:
    from faultline.stackfile import write_private

    # `export` lines: `source .faultline/credentials.env` works as written in a shell.
    write_private(path, "".join(f"export {k}={v}\n" for k, v in values.items()))


def cmd_rollout(args: argparse.Namespace) -> int:
    import json

    from faultline.rollout_request import request_rollout
    from faultline.stackfile import data_dir

    outcome = request_rollout(data_dir(), args.timeout, progress=lambda line: print(line, flush=True))
    print(json.dumps(outcome, indent=2))
    return 0 if outcome.get("ok") else 1
