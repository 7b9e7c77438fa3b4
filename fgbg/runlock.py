"""One driver per run: a lock file in the run directory, held while `fgbg train` runs.

RUN/.fgbg-lock is a small JSON file: host, pid, start time and a heartbeat that the holder rewrites
every HEARTBEAT seconds. A second driver for the same run is refused while the holder is alive: on
the same host while its process lives, on another host (or where only the object store is shared)
while the heartbeat is younger than STALE seconds; that expiry makes the file a lease. A lock left
by a killed driver is taken over, so a later resume is never blocked for long. The lock is the
driver's (`fit`), not a Tune trial's: a trial restarted after a node loss does not meet it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from . import storage
from .errors import FgbgError

LOCK = ".fgbg-lock"
HEARTBEAT = 15.0  # seconds between the holder's rewrites
STALE = 60.0  # a heartbeat older than this belongs to a driver that is gone


def alive(holder: dict, now: float | None = None) -> bool:
    """Whether the driver a lock names still holds it."""
    if (now or time.time()) - holder.get("beat", 0) > STALE:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """`with RunLock(run_dir):` the run is this driver's; an FgbgError if another live driver holds it or
    if the run folder cannot be written (found here, before any work starts)."""

    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, storage.join(run_dir, LOCK)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.path))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None  # none (writing one will say why a folder cannot hold it), or not a lock
        except OSError as e:
            raise storage.failure(self.path, e) from None

    def _write(self) -> None:
        try:
            storage.write_bytes(self.path, json.dumps({**self.me, "beat": time.time()}).encode())
        except OSError as e:
            raise FgbgError(f"{self.run_dir}: cannot write to the run folder ({e.strerror or e})") from None

    def _mine(self, holder: dict | None) -> bool:
        return bool(holder) and (holder.get("host"), holder.get("pid"), holder.get("started")) == (
            self.me["host"], self.me["pid"], self.me["started"])

    def __enter__(self) -> RunLock:
        holder = self.holder()
        if holder and alive(holder):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise FgbgError(f"{self.run_dir}: another fgbg train is writing this run (pid {holder.get('pid')} on {holder.get('host')}, "
                            f"since {since}); wait for it to end, or train under another --name")
        self._write()
        if not self._mine(self.holder()):  # two drivers started at once: the one whose write landed last has it
            raise FgbgError(f"{self.run_dir}: another fgbg train took this run as this one started; train under another --name")
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self._write()
            except FgbgError:
                pass  # a store that fails now and then: the next beat tries again

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self._mine(self.holder()):
            storage.delete(self.path)
