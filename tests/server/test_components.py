"""server/components.py: one build per process, shared by the app, the embedded finalizer and the RQ job."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import modeldrop.worker.finalize as finalize
from modeldrop.server import components as components_module
from modeldrop.server.app import create_app
from modeldrop.server.components import REDIS_TIMEOUT, Components, build
from modeldrop.server.finalizer import EmbeddedFinalizer, RQFinalizer
from modeldrop.server.settings import Settings
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import State
from tests.ggufgen import write_model


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    (tmp_path / "models").mkdir(exist_ok=True)
    return Settings(data_dir=tmp_path, models_dir=tmp_path / "models", staging_dir=tmp_path / "staging",
                    **overrides)  # type: ignore[arg-type]


def test_components_build_makes_the_store_locks_and_catalog_once(tmp_path: Path) -> None:
    built = build(settings_for(tmp_path))
    assert (tmp_path / "staging" / "uploads").is_dir() and (tmp_path / "staging" / "locks").is_dir()
    assert built.redis is None and built.locks.redis is None
    assert built.models_dir == tmp_path / "models" and built.sets_dir == tmp_path / "staging" / "sets"


def test_components_redis_is_one_client_shared_by_the_locks(tmp_path: Path) -> None:
    built = build(settings_for(tmp_path, redis_url="redis://127.0.0.1:1/0"))  # not connected until used
    assert built.redis is not None and built.locks.redis is built.redis
    options = built.redis.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (REDIS_TIMEOUT, REDIS_TIMEOUT)
    built.close()


def test_components_embedded_app_has_one_store_and_its_finalizer_uses_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    stores: list[FileStore] = []
    original_init = FileStore.__init__

    def counting_init(self: FileStore, *args: object, **kwargs: object) -> None:
        stores.append(self)
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FileStore, "__init__", counting_init)
    app = create_app(settings_for(tmp_path))
    parts = app.state.parts
    assert len(stores) == 1, "embedded mode built more than one FileStore"
    assert isinstance(parts.finalizer, EmbeddedFinalizer)
    assert parts.finalizer.components is parts.components
    assert parts.store is parts.components.store and parts.locks is parts.components.locks
    parts.finalizer.close()
    parts.tus.close()


def test_components_embedded_finalizer_installs_with_the_servers_components(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))
    parts = app.state.parts
    model = write_model(tmp_path / "source.gguf").read_bytes()
    store = parts.store
    info = store.create(UploadInfo(id=store.new_id(), length=len(model), filename="m.gguf", created_at=time.time()))
    store.paths(info.id).data.write_bytes(model)
    store.mark_queued(store.load(info.id))
    parts.finalizer.submit(info.id)
    deadline = time.monotonic() + 30
    while store.state(info.id) is not State.INSTALLED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.state(info.id) is State.INSTALLED, store.read_status(info.id)
    assert (tmp_path / "models" / "m.gguf").exists()
    parts.finalizer.close()
    parts.tus.close()


def test_components_rq_finalizer_enqueues_through_the_components_client(tmp_path: Path) -> None:
    built = build(settings_for(tmp_path, redis_url="redis://127.0.0.1:1/0"))
    finalizer = RQFinalizer(built)
    assert finalizer.connection is built.redis and finalizer.queue.connection is built.redis
    built.close()


def test_components_create_app_refuses_components_of_other_settings(tmp_path: Path) -> None:
    built = build(settings_for(tmp_path))
    with pytest.raises(ValueError):
        create_app(settings_for(tmp_path, fsync=False), built)


def test_components_the_job_needs_its_process_components(tmp_path: Path) -> None:
    finalize.use(None)
    with pytest.raises(RuntimeError):
        finalize.finalize_upload("0" * 32)
    built: Components = build(settings_for(tmp_path))
    finalize.use(built)
    try:
        assert finalize._components is built
    finally:
        finalize.use(None)


def test_components_import_arrows_point_one_way() -> None:
    """The job imports the server's store, locks and components, never the finalizer or the app that run it; and
    nothing imports the job by a string."""
    probe = ("import sys, modeldrop.worker.finalize; "
             "print(sorted(m for m in sys.modules if m in ('modeldrop.server.finalizer', 'modeldrop.server.app', "
             "'modeldrop.server.tus.handler')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
    source = Path(components_module.__file__).parent / "finalizer.py"
    assert "importlib" not in source.read_text()
