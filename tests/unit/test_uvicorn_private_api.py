"""faultline/uvicorn_worker.py overrides private methods of uvicorn_worker.UvicornWorker (there is no public
way to choose the Server class): a new uvicorn-worker or uvicorn release that renames or drops them must fail
here, not silently lose the drain on a deploy."""

from __future__ import annotations

import inspect

from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from faultline.uvicorn_worker import UVICORN_WORKER_PRIVATE, DrainingServer, Worker


def test_the_private_methods_we_override_still_exist_with_their_signatures() -> None:
    for name in UVICORN_WORKER_PRIVATE:
        assert callable(getattr(UvicornWorker, name, None)), f"uvicorn_worker.UvicornWorker.{name} is gone"
    assert inspect.iscoroutinefunction(UvicornWorker._serve)
    assert list(inspect.signature(UvicornWorker._serve).parameters) == ["self"]
    assert list(inspect.signature(UvicornWorker._install_sigquit_handler).parameters) == ["self"]
    assert Worker._serve is not UvicornWorker._serve  # ours is the one gunicorn runs


def test_the_server_api_the_drain_relies_on_is_there() -> None:
    assert list(inspect.signature(Server.handle_exit).parameters) == ["self", "sig", "frame"]
    assert list(inspect.signature(Server.shutdown).parameters) == ["self", "sockets"]
    assert inspect.iscoroutinefunction(Server.shutdown)
    server = DrainingServer(__import__("uvicorn").Config(app=None), drain=None)
    for attribute in ("started", "should_exit", "force_exit", "config"):
        assert hasattr(server, attribute), attribute
    assert "self.servers" in inspect.getsource(Server.startup)  # the listeners shutdown() closes first
