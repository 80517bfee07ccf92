"""Files on any `etils.epath` path: local, or on an object store (`gs://...`).

One place for what the package does to files on either kind of storage:
telling them apart (`is_local`), writing a whole file so that no reader sees
half of it (`atomic_write`), and the append-only text or record files that
object stores cannot append to (`RewrittenFile`). Imports only etils.
"""
import os
import time

from etils import epath

# Schemes that etils.epath opens through fsspec (gs://, s3://, az://).
OBJECT_STORE_SCHEMES = ("gs", "s3", "az")


def is_local(path) -> bool:
  """Whether `path` is on the local file system (not `gs://...` or another object store)."""
  return path is not None and "://" not in os.fspath(path)


def atomic_write(path, data: str | bytes, *, mkdir: bool = True) -> epath.Path:
  """Writes `data` to `path` through a temporary file and a rename; returns the path.

  A reader sees the old file or the new one, never part of one. If the write
  fails (a full disk), the temporary file is removed and the error raised;
  `path` is left as it was. On object stores each object write is atomic
  already; the rename keeps the same code for both.
  """
  path = epath.Path(path)
  if mkdir:
    path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}_{time.time_ns()}"
  try:
    if isinstance(data, bytes):
      tmp.write_bytes(data)
    else:
      tmp.write_text(data)
    tmp.replace(path)
  except BaseException:
    try:
      if tmp.exists():
        tmp.unlink()
    except OSError:
      pass
    raise
  return path


class RewrittenFile:
  """An append-only file on any path, kept in memory and rewritten whole at each flush.

  Object stores cannot append (TensorFlow's own GCS writer rewrites too);
  the files written this way (`metrics.jsonl`, TensorBoard events) stay
  small. `binary` chooses bytes or text; an existing file is continued.
  """

  def __init__(self, path, *, binary: bool = False):
    self._path = epath.Path(path)
    self._binary = binary
    empty = b"" if binary else ""
    if self._path.exists():
      empty = self._path.read_bytes() if binary else self._path.read_text()
    self._parts = [empty]
    self._dirty = False

  def write(self, data):
    self._parts.append(data)
    self._dirty = True

  def flush(self):
    if self._dirty:
      joined = (b"" if self._binary else "").join(self._parts)
      self._parts = [joined]
      if self._binary:
        self._path.write_bytes(joined)
      else:
        self._path.write_text(joined)
      self._dirty = False

  def close(self):
    self.flush()
