"""Tests for hpunet_jax.lease: one writer per workdir."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from hpunet_jax.infra import files, lease


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait(timeout=60)
  return proc.pid


def _write_record(workdir, **fields):
  record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00Z",
            "refreshed": time.time(), "token": "someone-else", **fields}
  # Written whole, as another run would (atomic_write): the holder's refresh thread
  # reads the file meanwhile and must not see half of it.
  files.atomic_write(workdir / lease.LEASE_FILE, json.dumps(record))
  return record


def test_second_lease_refuses_naming_the_holder_and_release_frees_it(tmp_path):
  with lease.WorkdirLease(tmp_path) as held:
    record = json.loads((tmp_path / lease.LEASE_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(lease.WorkdirBusyError,
                       match=rf"in use by pid {os.getpid()} on host {socket.gethostname()}"):
      lease.WorkdirLease(tmp_path).acquire()
    held.check()
  assert not (tmp_path / lease.LEASE_FILE).exists()
  lease.WorkdirLease(tmp_path).acquire().release()


def test_lease_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
  _write_record(tmp_path, pid=_dead_pid())
  held = lease.WorkdirLease(tmp_path).acquire()
  try:
    assert json.loads((tmp_path / lease.LEASE_FILE).read_text())["pid"] == os.getpid()
  finally:
    held.release()


def test_lease_on_another_host_is_stale_only_when_not_refreshed(tmp_path):
  _write_record(tmp_path, host="elsewhere", pid=1)
  with pytest.raises(lease.WorkdirBusyError, match="pid 1 on host elsewhere"):
    lease.WorkdirLease(tmp_path, stale_after=60).acquire()
  _write_record(tmp_path, host="elsewhere", pid=1, refreshed=time.time() - 120)
  lease.WorkdirLease(tmp_path, stale_after=60).acquire().release()


def test_object_store_path_writes_then_reads_back(tmp_path, monkeypatch):
  # As on gs://: the exclusive create goes through fsspec (here its local filesystem),
  # and the token read back after the pause decides.
  monkeypatch.setattr(lease.files, "is_local", lambda path: False)
  held = lease.WorkdirLease(tmp_path, settle=0.0).acquire()
  with pytest.raises(lease.WorkdirBusyError):
    lease.WorkdirLease(tmp_path, settle=0.0).acquire()
  held.release()
  assert not (tmp_path / lease.LEASE_FILE).exists()


def test_refresh_detects_a_takeover(tmp_path):
  held = lease.WorkdirLease(tmp_path, refresh_interval=0.05).acquire()
  try:
    time.sleep(0.2)
    assert json.loads((tmp_path / lease.LEASE_FILE).read_text())["refreshed"] > time.time() - 1
    _write_record(tmp_path, host="elsewhere", pid=1)
    deadline = time.time() + 10
    while time.time() < deadline:
      try:
        held.check()
      except lease.WorkdirBusyError as e:
        assert "elsewhere" in str(e)
        break
      time.sleep(0.05)
    else:
      pytest.fail("the takeover was not noticed")
  finally:
    held.release()
  assert (tmp_path / lease.LEASE_FILE).exists()   # the new holder's lease stays


def test_object_store_lease_is_created_exclusively(monkeypatch):
  """On gs:// the lease is an exclusive create (gcsfs: ifGenerationMatch=0), not a plain write."""
  import fsspec  # pylint: disable=g-import-not-at-top
  store = fsspec.filesystem("memory")
  path = "/bucket/run/lease.json"
  monkeypatch.setattr(fsspec.core, "url_to_fs", lambda url: (store, path))
  held = lease.WorkdirLease("gs://bucket/run")
  assert held._create({"token": "first"})             # pylint: disable=protected-access
  assert not held._create({"token": "second"})        # pylint: disable=protected-access
  assert json.loads(store.cat(path))["token"] == "first"
  store.rm(path)
