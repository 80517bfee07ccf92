"""Reads TensorFlow's V2 checkpoints (tensor bundles) without TensorFlow.

A `tf.train.Saver` V2 checkpoint with prefix `P` is:

* `P.index`: a LevelDB-style sorted table (TensorFlow's `core/lib/io/table`):
  data blocks of prefix-compressed `key -> value` entries with a restart
  array, an index block pointing at them, and a 48-byte footer ending in the
  table magic. Every block is followed by a type byte (0: stored as is) and
  the masked CRC32C of the block and that byte. Key `""` holds a
  `BundleHeaderProto` (shard count, endianness); every other key is a tensor
  name whose value is a `BundleEntryProto` (dtype, shape, shard, offset,
  size, masked CRC32C of the bytes).
* `P.data-SSSSS-of-NNNNN`: the tensors' raw bytes, in the byte order the
  header names (little-endian on every machine TF runs on).

Why a reader here and not TensorFlow as an optional dependency: TensorFlow
would be an install of several hundred MB for one command, and the tests (which must not
need TensorFlow) could then only check the name map against a fake reader,
never the reading of a real file. This reader is small, reads the fixture
TensorFlow wrote in `tests/fixtures/`, and checks every CRC, so a truncated
download or a changed format fails loudly instead of importing garbage. The
protobuf messages are decoded by the `protobuf` library from descriptors
declared below (field numbers from TensorFlow's `tensor_bundle.proto`,
`tensor_shape.proto`, `tensor_slice.proto`, `versions.proto`); CRC32C comes
from `google-crc32c`. Not supported, with an error that says so: Snappy-
compressed index blocks (TensorFlow writes bundle indexes uncompressed),
partitioned variables (`slices`), string tensors and big-endian bundles.

    tensors = tf_checkpoint.read("checkpoint/tf_graph_data.ckpt")
    tensors["model/HPUNet/prior/conv_2d/w"].shape   # (3, 3, 1, 12)
"""
import struct

from etils import epath
import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
import ml_dtypes
import numpy as np

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8

# TensorFlow's DataType enum (types.proto) -> numpy, for the types a model holds.
DTYPES = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
    9: np.int64, 10: np.bool_, 14: ml_dtypes.bfloat16, 17: np.uint16, 19: np.float16,
    22: np.uint32, 23: np.uint64,
}
_DTYPE_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}

_PROTOS = """
name: "hpunet_jax_tensor_bundle.proto"
package: "hpunet_jax.tf_checkpoint"
syntax: "proto3"
message_type {
  name: "TensorShapeProto"
  field { name: "dim" number: 2 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".hpunet_jax.tf_checkpoint.TensorShapeProto.Dim" }
  field { name: "unknown_rank" number: 3 label: LABEL_OPTIONAL type: TYPE_BOOL }
  nested_type {
    name: "Dim"
    field { name: "size" number: 1 label: LABEL_OPTIONAL type: TYPE_INT64 }
    field { name: "name" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
  }
}
message_type {
  name: "TensorSliceProto"
  field { name: "extent" number: 1 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".hpunet_jax.tf_checkpoint.TensorSliceProto.Extent" }
  nested_type {
    name: "Extent"
    field { name: "start" number: 1 label: LABEL_OPTIONAL type: TYPE_INT64 }
    field { name: "length" number: 2 label: LABEL_OPTIONAL type: TYPE_INT64 }
  }
}
message_type {
  name: "VersionDef"
  field { name: "producer" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "min_consumer" number: 2 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "bad_consumers" number: 3 label: LABEL_REPEATED type: TYPE_INT32 }
}
message_type {
  name: "BundleHeaderProto"
  field { name: "num_shards" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "endianness" number: 2 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "version" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".hpunet_jax.tf_checkpoint.VersionDef" }
}
message_type {
  name: "BundleEntryProto"
  field { name: "dtype" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "shape" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".hpunet_jax.tf_checkpoint.TensorShapeProto" }
  field { name: "shard_id" number: 3 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "offset" number: 4 label: LABEL_OPTIONAL type: TYPE_INT64 }
  field { name: "size" number: 5 label: LABEL_OPTIONAL type: TYPE_INT64 }
  field { name: "crc32c" number: 6 label: LABEL_OPTIONAL type: TYPE_FIXED32 }
  field { name: "slices" number: 7 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".hpunet_jax.tf_checkpoint.TensorSliceProto" }
}
"""


def _message_classes():
  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(
      text_format.Parse(_PROTOS, descriptor_pb2.FileDescriptorProto()).SerializeToString())
  get = lambda name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f"hpunet_jax.tf_checkpoint.{name}"))
  return get("BundleHeaderProto"), get("BundleEntryProto")


_BundleHeaderProto, _BundleEntryProto = _message_classes()


class CheckpointFormatError(ValueError):
  """The files are not a readable TF V2 checkpoint (corrupt, truncated, unsupported)."""


def masked_crc32c(data: bytes) -> int:
  """LevelDB's / TensorFlow's masked CRC32C (`crc32c::Mask`)."""
  crc = google_crc32c.value(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(data, pos):
  result = shift = 0
  while True:
    if pos >= len(data):
      raise CheckpointFormatError("truncated varint in the checkpoint index")
    byte = data[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7


def _read_block(index, offset, size, path):
  """The contents of one table block, after checking its type and CRC."""
  end = offset + size
  if end + _BLOCK_TRAILER_SIZE > len(index):
    raise CheckpointFormatError(f"{path}: block at {offset} runs past the end of the file")
  contents = index[offset:end]
  block_type = index[end]
  (stored_crc,) = struct.unpack("<I", index[end + 1:end + _BLOCK_TRAILER_SIZE])
  if masked_crc32c(index[offset:end + 1]) != stored_crc:
    raise CheckpointFormatError(f"{path}: CRC32C mismatch in the block at {offset} (corrupt file)")
  if block_type != 0:
    raise CheckpointFormatError(f"{path}: block at {offset} is compressed (type {block_type}); "
                                "only uncompressed index blocks, which TensorFlow writes for "
                                "checkpoints, are supported")
  return contents


def _block_entries(block, path):
  """`(key, value)` pairs of a block, in order (keys are prefix-compressed)."""
  if len(block) < 4:
    raise CheckpointFormatError(f"{path}: block too short")
  (num_restarts,) = struct.unpack("<I", block[-4:])
  limit = len(block) - 4 - 4 * num_restarts
  if limit < 0:
    raise CheckpointFormatError(f"{path}: bad restart count {num_restarts}")
  pos, key = 0, b""
  while pos < limit:
    shared, pos = _varint(block, pos)
    unshared, pos = _varint(block, pos)
    value_size, pos = _varint(block, pos)
    if shared > len(key) or pos + unshared + value_size > limit:
      raise CheckpointFormatError(f"{path}: bad entry at {pos}")
    key = key[:shared] + block[pos:pos + unshared]
    pos += unshared
    yield key, block[pos:pos + value_size]
    pos += value_size


def _table_entries(index, path):
  """All `(key, value)` pairs of a LevelDB-style table file, in key order."""
  if len(index) < _FOOTER_SIZE:
    raise CheckpointFormatError(f"{path}: too short to be a checkpoint index")
  footer = index[-_FOOTER_SIZE:]
  (magic,) = struct.unpack("<Q", footer[-8:])
  if magic != _TABLE_MAGIC:
    raise CheckpointFormatError(f"{path}: not a TF checkpoint index (bad table magic)")
  pos = 0
  _, pos = _varint(footer, pos)  # metaindex handle: unused by tensor bundles
  _, pos = _varint(footer, pos)
  index_offset, pos = _varint(footer, pos)
  index_size, pos = _varint(footer, pos)
  index_block = _read_block(index, index_offset, index_size, path)
  for _, handle in _block_entries(index_block, path):
    offset, p = _varint(handle, 0)
    size, _ = _varint(handle, p)
    yield from _block_entries(_read_block(index, offset, size, path), path)


def _strip_prefix(prefix):
  prefix = str(prefix)
  for suffix in (".index", ".data-00000-of-00001"):
    if prefix.endswith(suffix):
      return prefix[:-len(suffix)]
  return prefix


def read_index(prefix):
  """`({name: BundleEntryProto}, num_shards)` of the checkpoint at `prefix`."""
  prefix = _strip_prefix(prefix)
  path = epath.Path(prefix + ".index")
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {prefix} a TF V2 checkpoint prefix?")
  index = path.read_bytes()
  entries, header = {}, None
  for key, value in _table_entries(index, path):
    if key == b"":
      header = _BundleHeaderProto.FromString(value)
    else:
      entries[key.decode()] = _BundleEntryProto.FromString(value)
  if header is None:
    raise CheckpointFormatError(f"{path}: no bundle header")
  if header.endianness != 0:
    raise CheckpointFormatError(f"{path}: big-endian bundles are not supported")
  return entries, max(1, header.num_shards)


def variables(prefix) -> dict:
  """`{name: (shape, dtype name)}` of every tensor in the checkpoint, without reading data."""
  entries, _ = read_index(prefix)
  return {name: (tuple(d.size for d in e.shape.dim),
                 np.dtype(DTYPES[e.dtype]).name if e.dtype in DTYPES
                 else _DTYPE_NAMES.get(e.dtype, f"dtype {e.dtype}"))
          for name, e in entries.items()}


def read(prefix, names=None) -> dict:
  """Reads tensors of a TF V2 checkpoint into numpy arrays.

  Args:
    prefix: the checkpoint prefix (`.../tf_graph_data.ckpt`), local or any
      path `etils.epath` opens (`gs://...`); a path ending in `.index` works too.
    names: which tensors (default: all).

  Returns:
    `{name: np.ndarray}`.

  Raises:
    CheckpointFormatError: a CRC mismatch, a truncated file, an unsupported
      dtype or a partitioned variable, naming the tensor.
    KeyError: a requested name is not in the checkpoint.
  """
  prefix = _strip_prefix(prefix)
  entries, num_shards = read_index(prefix)
  if names is None:
    names = sorted(entries)
  missing = sorted(set(names) - set(entries))
  if missing:
    raise KeyError(f"not in the checkpoint {prefix}: {', '.join(missing)}")
  files = {}
  tensors = {}
  try:
    for name in names:
      entry = entries[name]
      if entry.slices:
        raise CheckpointFormatError(f"{name}: partitioned variables are not supported")
      if entry.dtype not in DTYPES:
        raise CheckpointFormatError(
            f"{name}: dtype {_DTYPE_NAMES.get(entry.dtype, entry.dtype)} is not supported")
      if entry.shard_id not in files:
        shard = epath.Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
        if not shard.exists():
          raise FileNotFoundError(f"{shard} not found (needed for {name})")
        files[entry.shard_id] = shard.open("rb")
      f = files[entry.shard_id]
      f.seek(entry.offset)
      data = f.read(entry.size)
      if len(data) != entry.size:
        raise CheckpointFormatError(f"{name}: the data file is truncated")
      if masked_crc32c(data) != entry.crc32c:
        raise CheckpointFormatError(f"{name}: CRC32C mismatch (corrupt data file)")
      tensors[name] = _to_array(name, entry, data)
  finally:
    for f in files.values():
      f.close()
  return tensors


def _to_array(name, entry, data):
  shape = tuple(d.size for d in entry.shape.dim)
  dtype = np.dtype(DTYPES[entry.dtype]).newbyteorder("<")
  if len(data) != dtype.itemsize * int(np.prod(shape)):
    raise CheckpointFormatError(f"{name}: {len(data)} bytes for {dtype.name} {shape}")
  return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
