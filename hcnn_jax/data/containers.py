"""Truncation checks read off container headers, for the formats libsndfile silently shortens.

libsndfile clamps a file's frame count to the bytes present when a header declares more (WAV, AU,
AIFF, W64, RF64: a W64 cut to 10 % of its bytes opens as a 10 % file), and mpg123 decodes whatever
MP3 frames remain. Where the container states how long its audio is, compare that with the bytes
actually in the file; `shortfall(path, size)` returns a one-line reason when they disagree, None
otherwise (a complete file, a header that does not state a length, or a format not handled here,
which libsndfile then judges alone).

The layouts are the formats' public specifications: RIFF/WAVE (Microsoft Multimedia Programming
Interface, 1991), RF64 (EBU Tech 3306), Sony Wave64, Sun/NeXT AU, AIFF 1.3 / AIFF-C (Apple),
EA IFF 85 (8SVX), Apple CAF, Ogg (RFC 3533) and the Xing/Info header LAME writes in an MP3's
first frame.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Optional

# A chunk walk stops after this many chunks: a hostile file cannot make it loop for long.
_MAX_CHUNKS = 4096


def _missing(declared_end: int, size: int, what: str) -> Optional[str]:
  if declared_end > size:
    return f'truncated: the {what} lacks {declared_end - size} bytes'
  return None


def _riff(f: BinaryIO, size: int, big_endian: bool) -> Optional[str]:
  end = '>' if big_endian else '<'
  pos = 12
  for _ in range(_MAX_CHUNKS):
    if pos + 8 > size:
      return None
    f.seek(pos)
    chunk_id, length = struct.unpack(end + '4sI', f.read(8))
    if chunk_id == b'data':
      # 0 and 0xFFFFFFFF mark streamed files whose writer never knew the length.
      if length in (0, 0xFFFFFFFF):
        return None
      return _missing(pos + 8 + length, size, 'WAV data chunk')
    pos += 8 + length + (length & 1)
  return None


def _rf64(f: BinaryIO, size: int) -> Optional[str]:
  f.seek(12)
  chunk_id, length = struct.unpack('<4sI', f.read(8))
  if chunk_id != b'ds64' or length < 24:
    return None
  _, data_size, _ = struct.unpack('<QQQ', f.read(24))
  pos = 20 + length + (length & 1)
  for _ in range(_MAX_CHUNKS):
    if pos + 8 > size:
      return None
    f.seek(pos)
    chunk_id, length = struct.unpack('<4sI', f.read(8))
    if chunk_id == b'data':
      return _missing(pos + 8 + data_size, size, 'RF64 data chunk')
    pos += 8 + length + (length & 1)
  return None


def _w64(f: BinaryIO, size: int) -> Optional[str]:
  pos = 40  # 'riff' GUID, 8-byte size, 'wave' GUID
  for _ in range(_MAX_CHUNKS):
    if pos + 24 > size:
      return None
    f.seek(pos)
    guid, length = struct.unpack('<16sQ', f.read(24))
    if guid[:4] == b'data':
      return _missing(pos + length, size, 'W64 data chunk')  # the size counts its 24-byte header
    if length < 24:
      return None
    pos += (length + 7) & ~7
  return None


def _au(f: BinaryIO, size: int, big_endian: bool) -> Optional[str]:
  f.seek(4)
  offset, length = struct.unpack(('>' if big_endian else '<') + 'II', f.read(8))
  if length == 0xFFFFFFFF:  # "unknown", allowed by the format
    return None
  return _missing(offset + length, size, 'AU data')


def _iff(f: BinaryIO, size: int, data_id: bytes, what: str) -> Optional[str]:
  """AIFF/AIFF-C (sound data in 'SSND') and Amiga 8SVX/16SV ('BODY'): big-endian IFF chunks."""
  pos = 12
  for _ in range(_MAX_CHUNKS):
    if pos + 8 > size:
      return None
    f.seek(pos)
    chunk_id, length = struct.unpack('>4sI', f.read(8))
    if chunk_id == data_id:
      return _missing(pos + 8 + length, size, what)
    pos += 8 + length + (length & 1)
  return None


def _caf(f: BinaryIO, size: int) -> Optional[str]:
  pos = 8
  for _ in range(_MAX_CHUNKS):
    if pos + 12 > size:
      return None
    f.seek(pos)
    chunk_id, length = struct.unpack('>4sq', f.read(12))
    if chunk_id == b'data':
      if length == -1:  # "runs to the end of the file"
        return None
      return _missing(pos + 12 + length, size, 'CAF data chunk')
    if length < 0:
      return None
    pos += 12 + length
  return None


def _ogg(f: BinaryIO, size: int) -> Optional[str]:
  """An Ogg stream ends with a whole page flagged end-of-stream (RFC 3533, section 6)."""
  pos, last_flags = 0, None
  while pos + 27 <= size:
    f.seek(pos)
    head = f.read(27)
    if head[:4] != b'OggS':
      break  # trailing bytes that are not pages: judged by what came before them
    flags, segments = head[5], head[26]
    lacing = f.read(segments)
    if len(lacing) < segments:
      return 'truncated: the last Ogg page is cut short'
    end = pos + 27 + segments + sum(lacing)
    if end > size:
      return f'truncated: the last Ogg page lacks {end - size} bytes'
    pos, last_flags = end, flags
  if last_flags is not None and not last_flags & 0x04:
    return 'truncated: the Ogg stream has no end-of-stream page'
  return None


def _mp3(f: BinaryIO, size: int) -> Optional[str]:
  """The Xing/Info header's stream size (LAME writes it in the first frame) against the file."""
  f.seek(0)
  head = f.read(10)
  start = 0
  if head[:3] == b'ID3' and len(head) == 10:
    start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
                  | (head[9] & 0x7F))
  f.seek(start)
  frame = f.read(200)
  if len(frame) < 40 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
    return None
  if (frame[1] >> 1) & 3 != 1:  # layer III only: the other layers carry no Xing header
    return None
  mpeg1 = (frame[1] >> 3) & 3 == 3
  mono = (frame[3] >> 6) == 3
  side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
  tag = frame[4 + side:8 + side]
  if tag not in (b'Xing', b'Info'):
    return None
  flags = struct.unpack('>I', frame[8 + side:12 + side])[0]
  if not flags & 0x2:  # no byte count
    return None
  field = 12 + side + (4 if flags & 0x1 else 0)
  stream_bytes = struct.unpack('>I', frame[field:field + 4])[0]
  # Encoders differ on whether the count includes tags; mpg123 itself only warns past 1 %.
  if start + stream_bytes - size <= stream_bytes // 100:
    return None
  return _missing(start + stream_bytes, size, 'MP3 stream (per its Xing/Info header)')


def shortfall(path, size: int) -> Optional[str]:
  """A one-line reason if the header of the file at `path` (of `size` bytes) declares more audio
  than the file holds; None when it is complete or its header states no length."""
  with open(path, 'rb') as f:
    head = f.read(12)
    if len(head) < 12:
      return None
    magic, kind = head[:4], head[8:12]
    try:
      if magic in (b'RIFF', b'RIFX') and kind == b'WAVE':
        return _riff(f, size, magic == b'RIFX')
      if magic == b'RF64' and kind == b'WAVE':
        return _rf64(f, size)
      if head[:4] == b'riff' and size >= 40:
        return _w64(f, size)
      if magic in (b'.snd', b'dns.'):
        return _au(f, size, magic == b'.snd')
      if magic == b'FORM' and kind in (b'AIFF', b'AIFC'):
        return _iff(f, size, b'SSND', 'AIFF sound data chunk')
      if magic == b'FORM' and kind in (b'8SVX', b'16SV'):
        return _iff(f, size, b'BODY', 'IFF/SVX body chunk')
      if magic == b'caff':
        return _caf(f, size)
      if magic == b'OggS':
        return _ogg(f, size)
      return _mp3(f, size)
    except struct.error:
      return 'truncated: the header is cut short'
