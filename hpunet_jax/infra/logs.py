"""Console output of the command-line tools: their own lines, not the libraries' chatter."""
import os


class _QuietLibraries:
  """Drops INFO lines from orbax/grain/tfds, which log every file they touch."""

  _NOISY = (os.sep + "orbax" + os.sep, os.sep + "grain" + os.sep,
            os.sep + "tensorflow_datasets" + os.sep, os.sep + "etils" + os.sep)

  def filter(self, record):
    return record.levelno >= 30 or not any(  # 30: Python's WARNING (absl's constants differ)
        part in record.pathname for part in self._NOISY)


def quiet_library_logs():
  """Keeps the command-line tools' output to their own progress and results."""
  import logging as python_logging  # pylint: disable=g-import-not-at-top
  # Every absl.logging call goes through the 'absl' logger, whatever handler prints it.
  python_logging.getLogger("absl").addFilter(_QuietLibraries())


