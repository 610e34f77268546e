"""`faultline` command: up, rollout, api, worker, scheduler, migrate, project, worker-check, dlq, alert.

Each command lives in a module of its own kind: cli_up (the local stack), cli_roles (one process of a role),
cli_checks (probes), cli_admin (operators' commands); this module is the parser and the entry point.
"""

from __future__ import annotations

import argparse
from typing import Any

from faultline.cli_admin import _limit, cmd_dlq, cmd_project, cmd_project_quota, cmd_status
from faultline.cli_checks import _check_liveness_file, cmd_worker_check
from faultline.cli_roles import cmd_api, cmd_migrate, cmd_scheduler, cmd_worker
from faultline.cli_up import cmd_rollout, cmd_up

__all__ = ["_check_liveness_file", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """Also used by tests that check the Dockerfile and the k8s manifests only run commands that exist."""
    parser = argparse.ArgumentParser(prog="faultline", description=(__doc__ or "").split("\n\n")[0])
    # every option's help ends with its default (%(default)s), in every subcommand
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    up = sub.add_parser("up", help="run the whole local stack in the foreground")
    up.add_argument("--nodes", type=int, default=3, help="API nodes behind nginx (each gunicorn + uvicorn)")
    up.add_argument("--port", type=int, default=8080, help="the port nginx listens on (127.0.0.1)")
    up.add_argument("--workers", type=int, default=2, help="worker processes consuming the task stream")
    up.add_argument("--db", default="mariadb", help="sqlite | mariadb (a private server) | galera (a private 3-node "
                    "Galera cluster) | a SQLAlchemy URL (mysql+asyncmy://u:p@h1:3306,h2:3306/db fails over)")
    up.add_argument("--redis", default="single", choices=["single", "sentinel", "cluster"],
                    help="one redis-server; 1 primary + 2 replicas + 3 Sentinels; or a 6-node Redis Cluster")
    # On by default, as in production (the seed's tiers, per ingest key); off for load tests of the rest.
    up.add_argument("--no-rate-limit", action="store_true",
                    help="turn off abuse tiers, project quotas and the group cap (FAULTLINE_RATE_LIMIT_ENABLED=false)")
    up.set_defaults(func=cmd_up)
    roll = sub.add_parser("rollout", help="rolling restart of the running `faultline up` (maxSurge 1, "
                                          "maxUnavailable 0)")
    roll.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this many seconds")
    roll.set_defaults(func=cmd_rollout)
    api = sub.add_parser("api", help="run one API node (gunicorn + uvicorn workers)")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback: no dev secrets)")
    api.add_argument("--port", type=int, default=8000, help="port to listen on")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(func=cmd_api)
    for name, func in (("worker", cmd_worker), ("scheduler", cmd_scheduler)):
        p = sub.add_parser(name, help=f"run one {name} process")
        p.add_argument("--name", default=None, help="its name in heartbeats and logs (default: "
                       "FAULTLINE_NODE_NAME, else the host name)")
        p.set_defaults(func=func)
    mig = sub.add_parser("migrate", help="create or upgrade the schema")
    mig.add_argument("--check", action="store_true", help="change nothing: exit 1 unless the database is at "
                     "this release's schema revision (or newer)")
    mig.add_argument("--wait", type=float, default=0.0, help="with --check: keep checking for up to this many "
                     "seconds (a pod's initContainer waiting for the migration Job)")
    mig.set_defaults(func=cmd_migrate)
    project = sub.add_parser("project", help="manage projects and their ingest keys (of the running stack)")
    psub = project.add_subparsers(dest="action", required=True, parser_class=_Parser)
    create = psub.add_parser("create", help="create a project and print its ingest key (shown once)")
    create.add_argument("name", help="project name (unique)")
    create.add_argument("--key", default=None, help="use this key (at least 16 characters) instead of a random one")
    create.set_defaults(func=cmd_project)
    psub.add_parser("list", help="projects, their ids and key hints").set_defaults(func=cmd_project)
    rotate = psub.add_parser("rotate-key", help="add a new key to a project and print it (the old ones keep "
                                                "working unless --revoke-old)")
    rotate.add_argument("name", help="project name")
    rotate.add_argument("--revoke-old", action="store_true", help="revoke every other key of the project")
    rotate.set_defaults(func=cmd_project)
    delete = psub.add_parser("delete", help="delete a project and revoke its keys (its groups stay)")
    delete.add_argument("name", help="project name")
    delete.set_defaults(func=cmd_project)
    quota = psub.add_parser("quota", help="show or set a project's event quota and new-group cap "
                                          "(0 = no limit, 'default' = the FAULTLINE_PROJECT_* setting)")
    quota.add_argument("name", help="project name")
    quota.add_argument("--per-second", dest="per_second", type=_limit, default=None,
                       help="events per second: N, 0 (no limit) or 'default' (unchanged if not given)")
    quota.add_argument("--per-minute", dest="per_minute", type=_limit, default=None,
                       help="events per minute: N, 0 or 'default' (unchanged if not given)")
    quota.add_argument("--new-groups-per-hour", dest="new_groups_per_hour", type=_limit, default=None,
                       help="new groups per rolling hour, then the overflow group: N, 0 or 'default'")
    quota.add_argument("--reset", action="store_true", help="back to the defaults, then apply the options given")
    quota.set_defaults(func=cmd_project_quota)
    check = sub.add_parser("worker-check", help="exit 0 if the worker's heartbeat is fresh (exec probe)")
    check.add_argument("--role", choices=["worker", "scheduler"], default="worker", help="which kind of process")
    check.add_argument("--name", default=None, help="one process by name (the exec probe); default: every "
                       "process of that role in the running stack")
    check.add_argument("--local", action="store_true", help="check this process's liveness file "
                       "(FAULTLINE_LIVENESS_DIR) instead of Redis: the Kubernetes probe, which a Redis outage "
                       "must not fail")
    check.set_defaults(func=cmd_worker_check)
    dlq = sub.add_parser("dlq", help="dead letters: tasks that failed for good (of the running stack)")
    dsub = dlq.add_subparsers(dest="action", required=True, parser_class=_Parser)
    dlist = dsub.add_parser("list", help="newest first")
    dlist.add_argument("--limit", type=int, default=50, help="how many to show")
    dlist.set_defaults(func=cmd_dlq)
    show = dsub.add_parser("show", help="one dead letter in full")
    show.add_argument("id", help="its task id (from `dlq list`)")
    show.set_defaults(func=cmd_dlq)
    replay = dsub.add_parser("replay", help="put tasks back on the queue (idempotent: nothing counted twice)")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the task id to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(func=cmd_dlq)
    dsub.add_parser("purge", help="delete every dead letter").set_defaults(func=cmd_dlq)
    from faultline import alerts

    alerts.add_parser(sub, _Parser)
    status = sub.add_parser("status", help="processes, ports, queue depth, dead letters, heartbeats")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
