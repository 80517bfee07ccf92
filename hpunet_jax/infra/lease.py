"""One writer per workdir: an exclusive, refreshed lease on the run's directory.

`WorkdirLease(workdir)` holds the file `<workdir>/lease.json`, a JSON record of
the holder (host, pid, start time, a random token and when it was last
refreshed). While it is held, a background thread rewrites `refreshed` every
`refresh_interval` seconds; `release()` deletes the file.

Semantics:

* **Taking it.** If there is no lease file, the lease is created only if
  absent: on a local filesystem by `O_CREAT | O_EXCL`; on object stores
  (`gs://...`) by fsspec's exclusive create, `open(mode="xb")`, which gcsfs
  (2024.12 and later) sends as an upload with `ifGenerationMatch=0`, so GCS
  itself refuses the second of two racing creates. Only where the store's
  filesystem has no exclusive create (fsspec raises on mode "x": older gcsfs,
  and fsspec's other object-store filesystems that lack it) is the record
  written plainly, last writer wins. Either way the record is read back after
  `settle` seconds and compared by token, so a store or emulator that accepts
  the precondition without enforcing it (fake-gcs-server ignores
  `ifGenerationMatch` on uploads) still leaves one holder: the run whose
  write landed last, the other refusing.
* **Refusing.** A lease whose holder is alive makes `acquire` raise
  `WorkdirBusyError`, one line naming the holder's host, pid and start time.
* **Stale leases.** A lease is stale when its holder is on this host and its
  pid no longer exists (a `kill -9`, a crash), or when it has not been
  refreshed for `stale_after` seconds (a holder on another host that died, a
  hung process). A stale lease is taken over with a warning naming the old
  holder.
* **Losing it.** Each refresh first reads the file back; if another process's
  token is there (it judged this one stale), the refresh stops and `check()`
  raises `WorkdirBusyError`, so the trainer stops at the next step boundary
  instead of writing beside the new holder.

Example:

  with lease.WorkdirLease(workdir) as held:
    ...
    held.check()  # at step boundaries
"""
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from absl import logging
from etils import epath
import fsspec

from hpunet_jax.infra import files

LEASE_FILE = "lease.json"


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lease."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def describe(record: dict) -> str:
  """'pid 123 on host h (started 2026-01-01T10:00:00Z, refreshed 5s ago)'."""
  refreshed = record.get("refreshed")
  ago = f", refreshed {time.time() - refreshed:.0f}s ago" if refreshed else ""
  return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
          f"(started {record.get('started', '?')}{ago})")


class WorkdirLease:
  """An exclusive lease on `workdir` (see the module docstring).

  Args:
    workdir: the run's directory (local path or `gs://...`); must exist.
    refresh_interval: seconds between refreshes of the record.
    stale_after: a lease not refreshed for this long is stale, whatever host
      holds it. Must exceed `refresh_interval` by a margin for slow storage.
    settle: seconds to wait between writing the record and reading it back
      where the storage cannot create a file exclusively.
  """

  def __init__(self, workdir, *, refresh_interval: float = 30.0, stale_after: float = 300.0,
               settle: Optional[float] = None):
    self.path = epath.Path(workdir) / LEASE_FILE
    self._refresh_interval = refresh_interval
    self._stale_after = stale_after
    self._settle = (0.1 if files.is_local(self.path) else 2.0) if settle is None else settle
    self._record = None
    self._lost = None          # the record that replaced ours, once we lost the lease
    self._stop = threading.Event()
    self._thread = None

  # -- reading -----------------------------------------------------------------

  def _read(self) -> Optional[dict]:
    """The current record, None if there is no lease file, {} if unreadable."""
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    try:
      record = json.loads(text)
    except json.JSONDecodeError:
      return {}
    return record if isinstance(record, dict) else {}

  def _stale_reason(self, record: dict) -> Optional[str]:
    """Why `record`'s holder is gone, or None if it may still be alive."""
    if not record:
      try:
        age = time.time() - self.path.stat().mtime
      except (FileNotFoundError, AttributeError, NotImplementedError):
        age = float("inf")
      return f"the lease file is unreadable and {age:.0f}s old" if age > self._stale_after \
          else None
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int) \
        and not _pid_alive(record["pid"]):
      return "its process no longer exists"
    refreshed = record.get("refreshed")
    if not isinstance(refreshed, (int, float)) or time.time() - refreshed > self._stale_after:
      return f"it was not refreshed for more than {self._stale_after:.0f}s"
    return None

  def _busy(self, record: dict) -> WorkdirBusyError:
    holder = describe(record) if record else "another process (unreadable lease)"
    return WorkdirBusyError(
        f"{self.path.parent} is in use by {holder}: one run per workdir. Wait for it, stop it, "
        f"or use another --workdir (a dead holder's lease {self.path} is taken over after "
        f"{self._stale_after:.0f}s, at once on its own host).")

  # -- writing -----------------------------------------------------------------

  def _new_record(self) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
                       .strftime("%Y-%m-%dT%H:%M:%SZ"),
            "refreshed": now, "token": uuid.uuid4().hex}

  def _create(self, record: dict) -> bool:
    """Creates the lease file only if absent; False if it exists."""
    text = json.dumps(record)
    if files.is_local(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    fs, path = fsspec.core.url_to_fs(os.fspath(self.path))
    try:
      with fs.open(path, "xb") as f:   # gcsfs: an upload with ifGenerationMatch=0
        f.write(text.encode())
      return True
    except FileExistsError:
      return False
    except (ValueError, NotImplementedError):
      pass   # no exclusive create on this store: written plainly below
    if self.path.exists():
      return False
    self.path.write_text(text)   # last writer wins, settled by the read-back
    return True

  def _overwrite(self, record: dict):
    # A failed write (a full disk) leaves no temporary file behind.
    files.atomic_write(self.path, json.dumps(record), mkdir=False)

  # -- the lease ---------------------------------------------------------------

  def acquire(self) -> "WorkdirLease":
    """Takes the lease, or raises `WorkdirBusyError` naming the live holder."""
    record = self._new_record()
    for _ in range(3):
      current = self._read()
      if current is not None:
        reason = self._stale_reason(current)
        if reason is None:
          raise self._busy(current)
        logging.warning("Taking over the stale lease on %s held by %s: %s.", self.path.parent,
                        describe(current) if current else "an unknown process", reason)
        try:
          self.path.unlink()
        except FileNotFoundError:
          pass
      if self._create(record):
        break
    else:
      raise self._busy(self._read() or {})
    time.sleep(self._settle)
    current = self._read()
    if not current or current.get("token") != record["token"]:
      raise self._busy(current or {})
    self._record = record
    self._stop.clear()
    self._thread = threading.Thread(target=self._refresh_loop, name="workdir_lease",
                                    daemon=True)
    self._thread.start()
    return self

  def _refresh_loop(self):
    while not self._stop.wait(self._refresh_interval):
      try:
        current = self._read()
        if not current or current.get("token") != self._record["token"]:
          self._lost = current or {}
          logging.error("Lost the lease on %s to %s.", self.path.parent,
                        describe(current) if current else "an unknown process")
          return
        self._record = dict(self._record, refreshed=time.time())
        self._overwrite(self._record)
      except OSError as e:  # storage hiccup: retry at the next interval
        logging.warning("Could not refresh the lease %s: %s", self.path, e)

  def check(self):
    """Raises `WorkdirBusyError` if another process has taken the lease over."""
    if self._lost is not None:
      raise WorkdirBusyError(
          f"another process took over {self.path.parent} ({describe(self._lost)}); "
          f"stopping so that only one run writes there")

  def release(self):
    """Stops refreshing and deletes the lease file if it is still ours."""
    if self._record is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      current = self._read()
      if current and current.get("token") == self._record["token"]:
        try:
          self.path.unlink()
        except FileNotFoundError:
          pass
    except OSError as e:   # the store is gone: the lease goes stale, the next run takes it
      logging.warning("Could not release the lease %s: %s", self.path, str(e).splitlines()[0])
    self._record = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc_info):
    self.release()
