"""`gs://` served from a local folder, for the object-store test: fsspec, epath and orbax see GCS.

    python tests/fake_gcs.py ROOT MODULE [ARGS...]

installs the fake (`gs://bucket/x` is `ROOT/bucket/x`) and runs `python -m
MODULE ARGS...` in this process. `etils.epath` reaches `gs://` through
fsspec's `gcs` filesystem, which is replaced here by a directory-backed
fsspec filesystem: every write of the package through epath (metrics,
events, figures, config, data) goes there exactly as it would go to gcsfs.

orbax writes its arrays with TensorStore, whose own GCS client does not go
through fsspec: its `gcs` kvstore spec is turned into a `file` spec under the
same ROOT, and orbax's bucket lookup (hierarchical namespaces) answers "no".
Everything orbax writes with epath (metadata, commit markers) goes through
the fake like the rest.
"""
import os
import runpy
import sys

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

ROOT_VARIABLE = "HPUNET_FAKE_GCS_ROOT"


class LocalBackedGCS(DirFileSystem):
  """`gs://bucket/path` <-> `$HPUNET_FAKE_GCS_ROOT/bucket/path`."""

  protocol = ("gs", "gcs")

  def __init__(self, *args, **kwargs):
    del args, kwargs   # gcsfs options such as finalize_on_close
    super().__init__(path=os.environ[ROOT_VARIABLE], fs=LocalFileSystem(auto_mkdir=True))


def install(root):
  os.environ[ROOT_VARIABLE] = os.fspath(root)
  for protocol in LocalBackedGCS.protocol:
    fsspec.register_implementation(protocol, LocalBackedGCS, clobber=True)

  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top

  def kvstore(path):
    bucket, blob = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(os.environ[ROOT_VARIABLE], bucket, blob)}

  class _Bucket:
    hierarchical_namespace_enabled = False

  gcs_utils.get_kvstore_for_gcs = kvstore
  gcs_utils.get_bucket = lambda name: _Bucket()


if __name__ == "__main__":
  install(sys.argv[1])
  sys.argv = [sys.argv[2]] + sys.argv[3:]
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
