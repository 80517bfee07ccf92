"""Minimal PNG reading and writing with numpy and zlib (no imaging library).

Reads the 8-bit, non-interlaced PNGs that LIDC crops and most tools write
(grayscale, grayscale+alpha, RGB, RGBA, palette); writes 8-bit grayscale or RGB.
"""
import os
import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PNGError(ValueError):
  """A file is not a PNG this module can read."""


def _chunk(kind, data):
  body = kind + data
  return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png(array):
  """Encodes uint8 `[H, W]`, `[H, W, 1]` or `[H, W, 3]` as PNG bytes."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"encode_png needs uint8, got {array.dtype}")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    color_type, channels = 0, 1
  elif array.ndim == 3 and array.shape[-1] == 3:
    color_type, channels = 2, 3
  else:
    raise ValueError(f"encode_png needs [H, W], [H, W, 1] or [H, W, 3], got {array.shape}")
  height, width = array.shape[:2]
  rows = array.reshape(height, width * channels)
  raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
  header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
  return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6))
          + _chunk(b"IEND", b""))


def write_png(path, array):
  """Writes `array` (see `encode_png`) to `path` atomically (temp file + rename)."""
  data = encode_png(array)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _unfilter(data, height, width, channels):
  stride = width * channels
  out = np.zeros((height, stride), np.uint8)
  prev = np.zeros(stride, np.int32)
  pos = 0
  for y in range(height):
    ftype = data[pos]
    line = np.frombuffer(data, np.uint8, stride, pos + 1).astype(np.int32)
    pos += stride + 1
    if ftype == 0:
      cur = line
    elif ftype == 1:  # Sub: sequential in x, vectorised over the pixel's channels.
      cur = line.copy()
      for x in range(channels, stride, channels):
        cur[x:x + channels] = (cur[x:x + channels] + cur[x - channels:x]) & 0xFF
    elif ftype == 2:
      cur = (line + prev) & 0xFF
    elif ftype in (3, 4):
      cur = np.zeros(stride, np.int32)
      for x in range(stride):
        left = cur[x - channels] if x >= channels else 0
        up = prev[x]
        if ftype == 3:
          pred = (left + up) >> 1
        else:
          upleft = prev[x - channels] if x >= channels else 0
          p = left + up - upleft
          pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
          pred = left if (pa <= pb and pa <= pc) else (up if pb <= pc else upleft)
        cur[x] = (line[x] + pred) & 0xFF
    else:
      raise PNGError(f"bad filter type {ftype} in row {y}")
    out[y] = cur
    prev = cur
  return out


def decode_png(data, name="<bytes>"):
  """Decodes PNG bytes to uint8 `[H, W, C]`; `name` is used in error messages."""
  if not data.startswith(_SIGNATURE):
    raise PNGError(f"{name}: not a PNG file (bad signature)")
  pos, header, idat, palette = len(_SIGNATURE), None, [], None
  try:
    while pos < len(data):
      (length,) = struct.unpack(">I", data[pos:pos + 4])
      kind = data[pos + 4:pos + 8]
      body = data[pos + 8:pos + 8 + length]
      if len(body) != length:
        raise PNGError(f"{name}: truncated {kind!r} chunk")
      pos += 12 + length
      if kind == b"IHDR":
        header = struct.unpack(">IIBBBBB", body)
      elif kind == b"PLTE":
        palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
      elif kind == b"IDAT":
        idat.append(body)
      elif kind == b"IEND":
        break
    if header is None or not idat:
      raise PNGError(f"{name}: missing IHDR or IDAT chunk")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or interlace != 0 or color_type not in _CHANNELS:
      raise PNGError(f"{name}: only 8-bit non-interlaced PNGs are supported "
                     f"(bit depth {depth}, color type {color_type}, interlace {interlace})")
    channels = _CHANNELS[color_type]
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (width * channels + 1):
      raise PNGError(f"{name}: image data has the wrong size")
    pixels = _unfilter(raw, height, width, channels).reshape(height, width, channels)
  except (struct.error, zlib.error) as e:
    raise PNGError(f"{name}: corrupt PNG ({e})") from e
  if color_type == 3:
    if palette is None:
      raise PNGError(f"{name}: palette image without a PLTE chunk")
    pixels = palette[pixels[..., 0]]
  return pixels


def read_png(path):
  """Reads a PNG file to uint8 `[H, W, C]`; errors name the file."""
  with open(path, "rb") as f:
    return decode_png(f.read(), name=str(path))
