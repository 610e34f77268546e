"""The edge's limits as written in deploy/nginx/nginx.conf.tmpl (the behaviour is in tests/e2e/test_edge.py):
nginx accepts the rendered file, and the numbers keep the shape the hardening depends on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from faultline.nginx import NginxServer
from faultline.services import require

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "nginx.conf.tmpl"


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in TEMPLATE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.match(r"([a-z_]+)\s+(.*?);$", line):
            out.setdefault(m[1], []).append(m[2])
    return out


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


def test_rendered_template_is_valid_for_nginx(tmp_path: Path) -> None:
    server = NginxServer(tmp_path / "nginx", [1, 2, 3], port=1)
    try:
        conf = server.render()
        out = subprocess.run([require("nginx", "nginx"), "-t", "-p", str(tmp_path / "nginx"), "-c", str(conf)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    finally:
        server.stop()  # removes the temp-file directory


def test_workers_and_file_descriptors_fit_the_connections() -> None:
    d = directives()
    assert d["worker_processes"][0] == "auto" or int(d["worker_processes"][0]) >= 2
    connections = int(d["worker_connections"][0])
    assert connections >= 8192
    assert int(d["worker_rlimit_nofile"][0]) >= 2 * connections  # a client and an upstream socket each


@pytest.mark.parametrize("name", ["client_header_timeout", "client_body_timeout", "send_timeout"])
def test_client_timeouts_are_short(name: str) -> None:
    assert seconds(directives()[name][0]) <= 15


def test_body_memory_does_not_scale_with_the_body_limit() -> None:
    d = directives()
    buffer = d["client_body_buffer_size"][0]
    assert buffer.endswith("k") and int(buffer[:-1]) <= 64, buffer
    assert d["proxy_request_buffering"] == ["on"]  # a trickled body never reaches a node
    assert d["client_max_body_size"] == ["{{max_body_bytes}}"]  # the app's own limit


def test_per_client_limits_key_on_the_peer_address() -> None:
    d = directives()
    text = TEMPLATE.read_text()
    assert d["limit_conn_zone"] and d["limit_req_zone"]
    key = d["limit_req_zone"][0].split()[0]
    assert d["limit_conn_zone"][0].split()[0] == key
    pattern = r"map \$edge_exempt " + re.escape(key) + r" \{\s*0 \$binary_remote_addr;"
    assert re.search(pattern, text), "the limits are not keyed per client address"
    assert d["limit_conn"] and d["limit_req"] and d["limit_req_status"] == ["429"] == d["limit_conn_status"]
    assert "nodelay" in d["limit_req"][0]  # a normal client's burst is not slowed down
