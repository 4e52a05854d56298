"""Keeps each gated target's catalog snapshot fresh (an I/O edge: trio).

One task per target with a policy: log in over a connection of its own (the
target's credential, the JIT broker's admin login in OIDC mode), read the
catalog (:func:`pgjit.catalog.load`), hand it to the target's gate, then wait
for the refresh interval or for a session to report DDL it let through (or a
name the catalog did not know), and read it again. Nothing here sits on a
statement's path: the gate always decides with the snapshot it has, and a
session that starts before the first snapshot waits for it (and fails closed
if it never comes).
"""

from __future__ import annotations

import logging
import time
import tracemalloc
from typing import Any

import trio

from pgjit.catalog import load
from pgjit.jit.admin import AdminConnection

log = logging.getLogger("pgjit.catalog")

#: Seconds between reloads when nothing asks for one.
REFRESH_INTERVAL = 60.0
#: After a request, wait this long for more DDL before reloading.
DEBOUNCE = 0.05
RETRY = 2.0


class CatalogKeeper:
    def __init__(self, target: Any, gate: Any, connect: Any, refresh_interval: float = REFRESH_INTERVAL) -> None:
        self.target = target
        self.gate = gate
        self._connect = connect  # async () -> AdminConnection
        self.refresh_interval = refresh_interval
        self.loaded = trio.Event()
        self.last_error: str | None = None
        self._wanted = trio.Event()
        self._generation = 0
        self.load_seconds = 0.0
        self.memory_bytes = 0

    def request_refresh(self) -> None:
        """A session let DDL through (or met a name it did not know)."""
        self._wanted.set()

    async def wait_loaded(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self.loaded.wait()
        return self.loaded.is_set()

    async def run(self) -> None:
        conn: AdminConnection | None = None
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        with trio.fail_after(15):
                            conn = await self._connect()
                    await self._load(conn)
                except Exception as e:  # noqa: BLE001 - keep trying, report why
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.warning("catalog load failed", extra={"target": self.target.name, "reason": self.last_error})
                    if conn is not None:
                        await conn.aclose()
                        conn = None
                    await trio.sleep(RETRY)
                    continue
                with trio.move_on_after(self.refresh_interval):
                    await self._wanted.wait()
                    await trio.sleep(DEBOUNCE)
                self._wanted = trio.Event()
        finally:
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await conn.aclose()

    async def _load(self, conn: AdminConnection) -> None:
        self._generation += 1
        started = time.perf_counter()
        tracing = not tracemalloc.is_tracing()
        if tracing and self._generation == 1:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        with trio.fail_after(30):
            catalog = await load(lambda sql: conn.execute(sql), self._generation)
        self.gate.set_catalog(catalog)
        if tracemalloc.is_tracing():
            self.memory_bytes = max(0, tracemalloc.get_traced_memory()[0] - before)
            if tracing:
                tracemalloc.stop()
        self.load_seconds = time.perf_counter() - started
        self.last_error = None
        self.loaded.set()
        log.info("catalog loaded", extra={
            "target": self.target.name, "generation": self._generation,
            "seconds": round(self.load_seconds, 4), "memory_kib": self.memory_bytes // 1024,
            **catalog.size,
        })
