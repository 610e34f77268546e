"""The API worker's start-up hook (faultline/gunicorn_conf.py): the start-up heap is frozen out of the collector."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from faultline import gunicorn_conf


def test_post_worker_init_freezes_the_start_up_heap() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        gc_objects_before = len(gc.get_objects())
        gunicorn_conf.post_worker_init(SimpleNamespace())
        # everything the process held is now out of reach of the collector's walks
        assert gc.get_freeze_count() >= gc_objects_before > 1000
        assert len(gc.get_objects()) < gc_objects_before
    finally:
        gc.unfreeze()  # this test process builds many apps: leave its collector as it was
