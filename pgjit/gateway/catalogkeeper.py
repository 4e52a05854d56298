"""Keeps each gated target's catalog snapshot fresh (an I/O edge: trio).

One task per target with a policy: log in over a connection of its own (the
target's credential, the JIT broker's admin login in OIDC mode), read the
catalog (:func:`pgjit.catalog.load`) and hand it to the target's gate. Then,
every ``probe_interval`` seconds, it runs one cheap probe (row counts and
transaction ids of the catalogs the snapshot is made of) and reads the catalog
again when the probe changed, when a session reports DDL it let through or a
name the snapshot did not know, and every ``refresh_interval`` seconds anyway.

Nothing here sits on a statement's path: the gate always decides with the
snapshot it has. A gated session probes once when it starts (one round trip
per session, shared by sessions starting together), so objects a DBA made
out of band before the session began are in the snapshot it is checked with;
a session that cannot get a snapshot fails closed.
"""

from __future__ import annotations

import logging
import time
import tracemalloc
from typing import Any

import trio

from pgjit.catalog import PROBE, load
from pgjit.jit.admin import AdminConnection

log = logging.getLogger("pgjit.catalog")

#: Seconds between full reloads when nothing changed.
REFRESH_INTERVAL = 300.0
#: Seconds between probes for changes made behind pgjit's back.
PROBE_INTERVAL = 1.0
#: A session starting within this many seconds of the last probe reuses it.
FRESH_ENOUGH = 0.05
RETRY = 1.0


class CatalogKeeper:
    def __init__(self, target: Any, gate: Any, connect: Any, *, probe_interval: float = PROBE_INTERVAL,
                 refresh_interval: float = REFRESH_INTERVAL) -> None:
        self.target = target
        self.gate = gate
        self._connect = connect  # async () -> AdminConnection
        self.probe_interval = probe_interval
        self.refresh_interval = refresh_interval
        self.loaded = trio.Event()
        self.last_error: str | None = None
        self._conn: AdminConnection | None = None
        self._lock = trio.Lock()
        self._wanted = False
        self._probe: tuple | None = None
        self._probed_at = 0.0
        self._loaded_at = 0.0
        self._generation = 0
        self.load_seconds = 0.0
        self.memory_bytes = 0

    def request_refresh(self) -> None:
        """A session let DDL through (or met a name it did not know)."""
        self._wanted = True

    async def wait_loaded(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self.loaded.wait()
        return self.loaded.is_set()

    async def ensure_fresh(self, timeout: float) -> bool:
        """For a session about to start: a snapshot no older than the server's
        catalog as of now. False if none could be had within ``timeout``."""
        started = time.monotonic()
        with trio.move_on_after(timeout):
            async with self._lock:
                if started < self._probed_at - 0.0 or (
                    self.loaded.is_set() and not self._wanted and time.monotonic() - self._probed_at < FRESH_ENOUGH
                ):
                    return True
                for attempt in (1, 2):  # a broken connection is retried once on a fresh one
                    try:
                        await self._check()
                        break
                    except Exception as e:  # noqa: BLE001 - reported, the session fails closed
                        await self._failed(e)
                        if attempt == 2:
                            return False
            return self.loaded.is_set()
        return False

    async def run(self) -> None:
        try:
            while True:
                async with self._lock:
                    try:
                        await self._check()
                        ok = True
                    except Exception as e:  # noqa: BLE001 - keep trying, report why
                        await self._failed(e)
                        ok = False
                await trio.sleep(self.probe_interval if ok else RETRY)
        finally:
            if self._conn is not None:
                with trio.CancelScope(shield=True):
                    await self._conn.aclose()

    async def _failed(self, e: BaseException) -> None:
        self.last_error = f"{type(e).__name__}: {e}"
        log.warning("catalog load failed", extra={"target": self.target.name, "reason": self.last_error})
        if self._conn is not None:
            await self._conn.aclose()
            self._conn = None
        self._probe = None

    async def _check(self) -> None:
        """Probe; reload when the probe moved, a reload was asked for, or it is time."""
        if self._conn is None or self._conn.closed:
            with trio.fail_after(15):
                self._conn = await self._connect()
        conn = self._conn
        with trio.fail_after(15):
            probe = tuple(await conn.execute(PROBE))
        self._probed_at = time.monotonic()
        due = time.monotonic() - self._loaded_at >= self.refresh_interval
        if probe != self._probe or self._wanted or due or not self.loaded.is_set():
            self._wanted = False
            await self._load(conn)
            self._probe = probe

    async def _load(self, conn: AdminConnection) -> None:
        self._generation += 1
        started = time.perf_counter()
        measure = self._generation == 1 and not tracemalloc.is_tracing()
        if measure:
            tracemalloc.start()
        try:
            with trio.fail_after(30):
                catalog = await load(conn.execute, self._generation)
            if measure:
                self.memory_bytes = tracemalloc.get_traced_memory()[0]
        finally:
            if measure:
                tracemalloc.stop()
        self.gate.set_catalog(catalog)
        self.load_seconds = time.perf_counter() - started
        self._loaded_at = time.monotonic()
        self.last_error = None
        self.loaded.set()
        log.info("catalog loaded", extra={
            "target": self.target.name, "generation": self._generation,
            "seconds": round(self.load_seconds, 4), "memory_kib": self.memory_bytes // 1024,
            **catalog.size,
        })
