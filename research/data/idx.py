"""Reader and writer for the IDX format used by the MNIST and Fashion-MNIST files.

Layout (all integers big-endian):

    2 zero bytes | type code (1 byte) | rank (1 byte) | rank x uint32 dims | data

The data is the array in C order, one big-endian element after another. Files
are often shipped gzipped; `read_idx` recognises gzip by its 1f 8b magic bytes
rather than by the file name, since renamed or already-unpacked downloads are
common.

Every failure raises `IdxError` naming the file and what is wrong with it, so
a broken download can be diagnosed from the message alone.
"""

import gzip
import os
import zlib

import numpy as np

from research.errors import UserError

# Type code -> big-endian numpy dtype, as the format defines them.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_CODES: dict[np.dtype, int] = {
    dtype.newbyteorder('='): code for code, dtype in _DTYPES.items()
}
_GZIP_MAGIC = b'\x1f\x8b'


class IdxError(UserError, ValueError):
    """A file is not well-formed IDX; the message names the file and fault."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (plain or gzipped) into a native-endian numpy array."""
    path = os.fspath(path)
    raw, gzipped = _read_bytes(path)
    # For gzip files the sizes quoted in errors are of the unpacked stream.
    has = 'decompressed file has' if gzipped else 'file has'

    if len(raw) < 4:
        raise IdxError(
            f'{path}: truncated: {has} {len(raw)} bytes, fewer than the '
            '4-byte IDX magic')
    if raw[0] != 0 or raw[1] != 0:
        raise IdxError(
            f'{path}: bad magic 0x{raw[0]:02x}{raw[1]:02x} (expected 0x0000 '
            'followed by a type code and rank, e.g. 0x00000803)')
    code, rank = raw[2], raw[3]
    if code not in _DTYPES:
        known = ', '.join(f'0x{c:02x} {d.name}' for c, d in _DTYPES.items())
        raise IdxError(
            f'{path}: unknown IDX type code 0x{code:02x} (known: {known})')
    dtype = _DTYPES[code]

    header_size = 4 + 4 * rank
    if len(raw) < header_size:
        raise IdxError(
            f'{path}: truncated: header promises rank {rank} ({4 * rank} '
            f'bytes of dimensions), {has} {len(raw) - 4} after the magic')
    shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', rank, offset=4))

    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    promise = (f'header promises {"x".join(map(str, shape)) or "a scalar"} '
               f'{dtype.name} = {expected} bytes of data')
    if actual < expected:
        raise IdxError(f'{path}: truncated: {promise}, {has} {actual}')
    if actual > expected:
        raise IdxError(
            f'{path}: trailing bytes: {promise}, {has} {actual} '
            f'({actual - expected} extra)')

    data = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
    # Native byte order, and an owned writable array rather than a view of
    # the (immutable) bytes object.
    return data.astype(dtype.newbyteorder('='))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes `array` as IDX, gzipped when `path` ends in `.gz`."""
    path = os.fspath(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder('=')
    if native not in _CODES:
        supported = ', '.join(d.name for d in _DTYPES.values())
        raise IdxError(f'{path}: cannot write dtype {array.dtype} as IDX '
                       f'(supported: {supported})')
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise IdxError(f'{path}: shape {array.shape} does not fit an IDX header')

    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim])
    header += np.asarray(array.shape, '>u4').tobytes()
    payload = header + np.ascontiguousarray(array, _DTYPES[code]).tobytes()
    if path.endswith('.gz'):
        # mtime=0 keeps the bytes reproducible, so equal arrays give equal files.
        with gzip.GzipFile(path, 'wb', mtime=0) as f:
            f.write(payload)
    else:
        with open(path, 'wb') as f:
            f.write(payload)


def _read_bytes(path: str) -> tuple[bytes, bool]:
    """Returns the file's contents (gunzipped if gzip) and whether it was."""
    with open(path, 'rb') as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        return raw, False
    try:
        return gzip.decompress(raw), True
    # A cut-off download ends in EOFError; damage inside the stream surfaces
    # as BadGzipFile (an OSError) or zlib.error depending on where it sits.
    except (EOFError, OSError, zlib.error) as e:
        raise IdxError(
            f'{path}: corrupt gzip stream: {type(e).__name__}: {e}') from e
