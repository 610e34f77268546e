"""deploy/k8s rendered by kustomize: valid against the Kubernetes schemas, and in agreement with the app.

The timing figures live in two places (the ConfigMap the app reads, the probes/preStop/grace periods the
kubelet uses); these tests read both and fail when they drift apart.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from core import liveness
from core.ratelimit.proxies import parse_cidrs
from core.settings import Settings
from faultline import gunicorn_conf
from faultline.asgi import create
from faultline.cli import build_parser
from faultline.uvicorn_worker import Worker
from health import checks, probes
from realtime.server import RealtimeServer
from tests.unit.k8s_render import OVERLAYS, REPO, by_kind, pod_specs, render

# Objects of custom resources: validated against their vendored CRDs (tests/unit/test_k8s_scaling.py).
CUSTOM_KINDS = {"ScaledObject", "PodMonitor"}
# ingress-nginx's upstream-keepalive-timeout default (controller ConfigMap): idle upstream connections live 60 s.
INGRESS_NGINX_UPSTREAM_KEEPALIVE = 60
NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "nginx.conf.tmpl"

K8S_VERSION = "1.32.0"  # the kubectl here embeds kustomize v5.5 (kubectl 1.32)


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render("production")


@pytest.fixture(scope="module")
def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    [cm] = by_kind(docs, "ConfigMap").values()
    return dict(cm["data"])


@pytest.fixture(scope="module")
def settings(config: dict[str, str]) -> Settings:
    """What the pods' Settings would be (the Secret's values are filled in out of band)."""
    env = {k.removeprefix("FAULTLINE_").lower(): v for k, v in config.items() if k.startswith("FAULTLINE_")}
    return Settings(**env, admin_token="x" * 32)


def _container(docs: list[dict[str, Any]], workload: str) -> dict[str, Any]:
    [container] = pod_specs(docs)[workload]["containers"]
    return container


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 1_048_576


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_rendered_object_validates_against_the_schema(overlay: str) -> None:
    objects = render(overlay)
    kinds = {d["kind"] for d in objects}
    assert {"Deployment", "Service", "Ingress", "ConfigMap", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "Job", "NetworkPolicy", "ServiceAccount"} | CUSTOM_KINDS <= kinds
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises on any unknown/invalid field


def test_production_overlay_sets_namespace_and_pinned_image(docs: list[dict[str, Any]]) -> None:
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"faultline"}
    images = {c["image"] for spec in pod_specs(docs).values()
              for c in spec["containers"] + spec.get("initContainers", [])}
    [image] = images
    name, digest = image.split("@sha256:")
    assert name == "registry.example.com/faultline/faultline" and len(digest) == 64 and int(digest, 16) >= 0


def release_id(image: str) -> str:
    """What names a release's migration Job: 12 hex of the digest, else the tag with dots as dashes."""
    if "@sha256:" in image:
        return image.split("@sha256:")[1][:12]
    return image.rsplit(":", 1)[1].replace(".", "-")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_migration_job_is_named_after_the_release(overlay: str) -> None:
    """A new release is a new Job (kubectl apply creates it), never an edit of a finished Job's immutable
    pod template; and every Deployment's pods wait for that Job's schema before they start."""
    docs = render(overlay)
    [job] = by_kind(docs, "Job").values()
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert job["metadata"]["name"] == f"faultline-migrate-{release_id(container['image'])}"
    for name, deployment in by_kind(docs, "Deployment").items():
        [wait] = deployment["spec"]["template"]["spec"]["initContainers"]
        args = build_parser().parse_args(wait["command"][1:])
        assert args.func.__name__ == "cmd_migrate" and args.check, name
        assert 0 < args.wait <= job["spec"]["activeDeadlineSeconds"], name  # waits as long as the Job may run
        assert wait["image"] == container["image"], name  # the same release's migrations define "head"


def test_config_map_is_valid_app_settings(config: dict[str, str], settings: Settings) -> None:
    fields = {f"FAULTLINE_{name.upper()}" for name in Settings.model_fields}
    # read with os.environ before Settings exist (logging set-up in the CLI and the gunicorn config)
    direct = {k for k in config if any(k in f.read_text() for f in (REPO / "faultline").glob("*.py"))}
    unknown = {k for k in config if k.startswith("FAULTLINE_")} - fields - direct
    assert not unknown, f"ConfigMap keys the app does not read: {unknown}"
    assert settings.env == "production"


def test_api_termination_fits_the_grace_period(docs: list[dict[str, Any]], settings: Settings) -> None:
    pod = pod_specs(docs)["faultline-api"]
    api = _container(docs, "faultline-api")
    pre_stop = api["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep = float(pre_stop[1])
    grace = pod["terminationGracePeriodSeconds"]
    # gunicorn SIGKILLs its workers at graceful_timeout; the app's own sequence must end before that.
    graceful = settings.shutdown_timeout + 3
    assert int(float(settings.shutdown_timeout)) + 3 == int(graceful)
    assert settings.shutdown_timeout < graceful
    assert grace > sleep + settings.shutdown_timeout
    assert grace > sleep + graceful, f"grace {grace}s <= preStop {sleep}s + gunicorn graceful {graceful}s"
    assert settings.drain_delay < settings.shutdown_timeout


def test_gunicorn_graceful_timeout_follows_the_shutdown_timeout() -> None:
    assert gunicorn_conf.graceful_timeout == int(float(Settings().shutdown_timeout)) + 3


def test_readiness_notices_a_drain_within_the_drain_delay(docs: list[dict[str, Any]], settings: Settings) -> None:
    ready = _container(docs, "faultline-api")["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= settings.drain_delay


def test_probe_paths_and_ports_exist_in_the_app(docs: list[dict[str, Any]], settings: Settings) -> None:
    api = _container(docs, "faultline-api")
    paths = set(create(settings).openapi()["paths"])  # every route the node's app serves
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    argv = build_parser().parse_args(api["command"][1:])
    for kind, expected in (("startupProbe", "/health/live"), ("livenessProbe", "/health/live"),
                           ("readinessProbe", "/health/ready")):
        probe = api[kind]["httpGet"]
        assert probe["path"] == expected and probe["path"] in paths
        assert ports[probe["port"]] == argv.port  # the probe hits the port gunicorn binds
        # a probe must outlast the slowest check it runs (the DB ping in readiness: checks.DB_TIMEOUT)
        assert api[kind]["timeoutSeconds"] > max(checks.DB_TIMEOUT, checks.REDIS_TIMEOUT)
    assert argv.host == "0.0.0.0"


def test_memory_limit_is_below_the_container_limit(docs: list[dict[str, Any]], settings: Settings) -> None:
    api = _container(docs, "faultline-api")
    workers = build_parser().parse_args(api["command"][1:]).workers
    limit = _mib(api["resources"]["limits"]["memory"])
    # each gunicorn worker checks its own RSS; the master takes ~50 MB
    assert settings.memory_limit_mb * workers + 64 < limit


@pytest.mark.parametrize("workload,role", [("faultline-worker", "worker"), ("faultline-scheduler", "scheduler")])
def test_background_processes_use_the_local_liveness_probe(docs: list[dict[str, Any]], settings: Settings,
                                                           workload: str, role: str) -> None:
    """The probe reads the process's own liveness file (no Redis: an outage must not restart them all), in
    a writable emptyDir, and gives it longer than the file's own staleness limits before a restart."""
    container = _container(docs, workload)
    assert build_parser().parse_args(container["command"][1:]).func.__name__ == f"cmd_{role}"
    for kind in ("startupProbe", "livenessProbe"):
        command = container[kind]["exec"]["command"]
        args = build_parser().parse_args(command[1:])
        assert command[0] == "faultline" and args.func.__name__ == "cmd_worker_check" and args.role == role
        assert args.local, f"{workload} {kind} asks Redis"
        probe = container[kind]
        assert probe["periodSeconds"] * probe["failureThreshold"] > max(liveness.STALE_AFTER,
                                                                        settings.worker_stall_after)
    assert settings.liveness_dir is not None
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_specs(docs)[workload]["volumes"]}
    mount = next(p for p in mounts if settings.liveness_dir.is_relative_to(p))
    assert "emptyDir" in volumes[mounts[mount]]
    names = {e["name"]: e for e in container.get("env", [])}
    assert names["FAULTLINE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # a worker finishes its running tasks within shutdown_timeout before it exits
    assert pod_specs(docs)[workload]["terminationGracePeriodSeconds"] > settings.shutdown_timeout


def test_every_deployment_rolls_with_surge_1_unavailable_0(docs: list[dict[str, Any]]) -> None:
    for name, deployment in by_kind(docs, "Deployment").items():
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}, name


def test_every_container_command_is_a_faultline_command(docs: list[dict[str, Any]]) -> None:
    seen = set()
    for spec in pod_specs(docs).values():
        for container in spec["containers"]:
            assert container["command"][0] == "faultline"
            seen.add(build_parser().parse_args(container["command"][1:]).func.__name__)
    assert seen == {"cmd_api", "cmd_worker", "cmd_scheduler", "cmd_migrate"}


NGINX = "nginx.ingress.kubernetes.io/"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_ingresses_long_feed_short_api_and_no_retry_that_counts_twice(overlay: str) -> None:
    docs = render(overlay)
    ingresses = by_kind(docs, "Ingress")
    live = ingresses["faultline-live"]["metadata"]["annotations"]
    api = ingresses["faultline-api"]["metadata"]["annotations"]
    paths = {name: [p["path"] for r in i["spec"]["rules"] for p in r["http"]["paths"]] for name, i in ingresses.items()}
    assert paths == {"faultline-live": ["/socket.io/"], "faultline-api": ["/"]}
    # Socket.IO feeds sit idle for minutes (ingress-nginx's default 60 s would cut them); never replayed.
    assert int(live[NGINX + "proxy-read-timeout"]) >= 3600 and int(live[NGINX + "proxy-send-timeout"]) >= 3600
    assert live[NGINX + "proxy-next-upstream"] == "off"
    # ingest/API: a stuck pod is given up on quickly
    assert int(api[NGINX + "proxy-read-timeout"]) <= 60 and int(api[NGINX + "proxy-connect-timeout"]) <= 5
    retries = api[NGINX + "proxy-next-upstream"].split()
    # re-sending a POST that reached a pod is safe only where the controller sets X-Edge-Request-ID
    assert ("non_idempotent" in retries) == (overlay == "edge-retries")
    assert {frozenset(i["spec"]["rules"][0]["host"] for i in ingresses.values())} == \
        {frozenset(t for i in ingresses.values() for tls in i["spec"]["tls"] for t in tls["hosts"])}


def test_ingress_body_limit_and_backends(docs: list[dict[str, Any]], settings: Settings) -> None:
    services = by_kind(docs, "Service")
    for name, ingress in by_kind(docs, "Ingress").items():
        notes = ingress["metadata"]["annotations"]
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert _mib(notes[NGINX + "proxy-body-size"].replace("m", "Mi")) * 1_048_576 == settings.max_body_bytes
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        service_ports = {p["name"]: p["targetPort"] for p in services[backend["name"]]["spec"]["ports"]}
        assert service_ports == {"http": "http"}, name  # the metrics side port is routed by nothing
        assert notes.get("cert-manager.io/cluster-issuer"), name  # TLS issued for the host (production)


def test_ingress_timeouts_outlast_what_the_app_takes(docs: list[dict[str, Any]], settings: Settings) -> None:
    ingresses = by_kind(docs, "Ingress")
    api = ingresses["faultline-api"]["metadata"]["annotations"]
    live = ingresses["faultline-live"]["metadata"]["annotations"]
    # ingest answers within its Redis budget (or a fast 503): the edge never gives up on a working pod first
    assert int(api[NGINX + "proxy-read-timeout"]) > settings.ingest_budget
    # a retry must still fit after a refused connection
    assert int(api[NGINX + "proxy-next-upstream-timeout"]) > int(api[NGINX + "proxy-connect-timeout"])
    # an idle feed only carries Socket.IO's pings: the edge must wait longer than a ping round
    eio = RealtimeServer(settings).sio.eio
    assert int(live[NGINX + "proxy-read-timeout"]) > eio.ping_interval + eio.ping_timeout


def test_keep_alive_outlives_every_proxy_in_front(settings: Settings) -> None:
    """A proxy must close an idle upstream connection before the node does, or it reuses a closed one (502)."""
    assert settings.keepalive_timeout > INGRESS_NGINX_UPSTREAM_KEEPALIVE
    local = re.search(r"upstream faultline_api \{.*?keepalive_timeout (\d+)s;", NGINX_TEMPLATE.read_text(), re.S)
    assert local and int(local.group(1)) < Settings().keepalive_timeout
    assert gunicorn_conf.keepalive == int(Settings().keepalive_timeout)
    assert "timeout_keep_alive" not in Worker.CONFIG_KWARGS  # uvicorn takes gunicorn's keepalive


def test_metrics_on_the_side_port_only(docs: list[dict[str, Any]], settings: Settings) -> None:
    assert settings.metrics_port and settings.metrics_host == "0.0.0.0"
    for name, spec in pod_specs(docs).items():
        if name.startswith("faultline-migrate"):
            continue
        [container] = spec["containers"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == settings.metrics_port, name
    app, plain = create(settings), create(settings.model_copy(update={"metrics_port": None}))
    # /metrics is a route of the app itself (not of an included router): on the routed HTTP port only
    # without a side port
    assert [r for r in plain.routes if getattr(r, "path", "") == "/metrics"]
    assert not [r for r in app.routes if getattr(r, "path", "") == "/metrics"]
    [monitor] = by_kind(docs, "PodMonitor").values()
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_readiness_requires_nothing_shared() -> None:
    """Every pod sees the same Redis, queue, DB and disk: requiring them would empty every endpoint at once."""
    assert probes.READY_REQUIRED == {"drain", "event_loop"}


def test_selectors_point_at_real_pods(docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(docs, "Deployment")
    labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}

    def matches(selector: dict[str, str]) -> set[str]:
        return {n for n, lab in labels.items() if selector.items() <= lab.items()}

    for service in by_kind(docs, "Service").values():
        assert matches(service["spec"]["selector"]) == {"faultline-api"}
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        assert len(matches(pdb["spec"]["selector"]["matchLabels"])) == 1
    [hpa] = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "faultline-api"
    [scaled] = by_kind(docs, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "faultline-worker"
    for autoscaled in ("faultline-api", "faultline-worker"):  # a replicas: would reset the autoscaler each apply
        assert "replicas" not in deployments[autoscaled]["spec"], autoscaled


def test_migration_job_runs_faultline_migrate(docs: list[dict[str, Any]]) -> None:
    [job] = by_kind(docs, "Job").values()
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert build_parser().parse_args(container["command"][1:]).func.__name__ == "cmd_migrate"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


SECRET_EXAMPLE = REPO / "deploy" / "k8s" / "secret.example.yaml"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_no_overlay_applies_a_secret(overlay: str) -> None:
    """`kubectl apply -k` must never overwrite the real Secret with a template's empty values."""
    assert not by_kind(render(overlay), "Secret")


def test_secret_example_is_what_the_pods_reference_and_holds_no_value(docs: list[dict[str, Any]]) -> None:
    [secret] = [d for d in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if d]
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert "data" not in secret and all(value == "" for value in secret["stringData"].values())
    referenced = {ref["secretRef"]["name"] for spec in pod_specs(docs).values() for c in spec["containers"]
                  for ref in c.get("envFrom", []) if "secretRef" in ref}
    assert referenced == {secret["metadata"]["name"]}
    assert secret["metadata"]["namespace"] == next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    # what production refuses to start without, plus where the stores are
    assert {"FAULTLINE_ADMIN_TOKEN", "FAULTLINE_REDIS_URL", "FAULTLINE_DATABASE_URL"} <= set(secret["stringData"])
    # the example files are not picked up by a kustomization either
    for kustomization in (REPO / "deploy" / "k8s").rglob("kustomization.yaml"):
        assert "secret" not in " ".join(yaml.safe_load(kustomization.read_text()).get("resources", []))


RFC1918 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


def test_trusted_proxies_are_narrow(settings: Settings) -> None:
    """Only the ingress controller's range may set the client address, not every private address."""
    networks = parse_cidrs(settings.trusted_proxies)
    assert networks
    for net in networks:
        assert net.num_addresses <= 2 ** 16, f"{net}: wider than a /16 pod network"
        assert not any(net.version == big.version and big.subnet_of(net) for big in RFC1918), net  # type: ignore[arg-type]
        assert not net.is_global, f"{net}: a proxy of ours has a private address"
