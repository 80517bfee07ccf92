"""What every dataset builder of the package shares: array_record by default and its code path."""
import inspect

from etils import epath
import tensorflow_datasets as tfds


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` that needs no TensorFlow to write or read.

  tfds defaults to TFRecord, which needs TensorFlow to write and read; the
  default here is array_record, so plain `tfds.builder(...)` and
  `tfds.data_source(...)` work without TensorFlow.
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # tfds 4.9.10 derives this through `importlib_resources`, which it does not
    # declare for Python >= 3.9 (tensorflow/datasets#11212); it is the file
    # that defines the builder.
    return epath.Path(inspect.getfile(cls))


def manual_dir(dl_manager):
  """`dl_manager.manual_dir` as an `epath.Path`, or None where tfds has none to give."""
  try:
    return epath.Path(dl_manager.manual_dir)
  except AssertionError:  # tfds' way of saying "no manual_dir or it is empty".
    return None
