"""The full datasets, downloaded without TensorFlow into a local cache, checked against pinned
sha256s.

    from research.data import download
    directory = download.fetch('mnist')     # <cache>/mnist/, the four .gz IDX files
    directory = download.fetch('cifar10')   # <cache>/cifar10/cifar-10-batches-bin/
    directory = download.cached('mnist')    # the same directory if all there, else None; no network

`FILES` lists every file: its canonical URL, and the size and sha256 that
tensorflow-datasets publishes for it. `fetch` downloads only the files the cache lacks; a cache
hit touches no network at all. What `fetch` returns is what the readers read: the IDX files of
MNIST and Fashion-MNIST (gzipped, as published), CIFAR-10's binary batches (the tarball,
unpacked) and tiny Shakespeare's input.txt.

    $DEEPGEN_DATA_DIR      the cache (default $XDG_CACHE_HOME/deepgen, else ~/.cache/deepgen)
    $DEEPGEN_DATA_MIRROR   a base URL to fetch every file from instead, as <mirror>/<file name>
                           (say, a directory of the same files served on the local network)

Nothing partial ever lands in the cache: a file streams into a temporary file beside its final
name and is renamed into place only once its size and sha256 match; on any failure the
temporary file is deleted. Two processes fetching the same file at once both succeed. Offline,
`fetch` fails within CONNECT_TIMEOUT_S with `SourceUnreachable`; every other failure (an HTTP
error, a stalled or truncated download, a wrong checksum, an HTML page instead of the file, a
full disk) raises `DownloadError`, whose one-line message names the URL and what was wrong.
"""
import dataclasses
import errno
import gzip
import hashlib
import http.client
import os
import shutil
import ssl
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

from absl import logging

CONNECT_TIMEOUT_S = 3.0  # for the whole connection attempt: DNS lookup, TCP, TLS
READ_TIMEOUT_S = 30.0  # for each read from the socket
USER_AGENT = 'deepgen-download (Python urllib)'
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed; the one-line message names the URL and what was wrong."""


class SourceUnreachable(DownloadError):
    """No connection could be made to the host at all (DNS failure, refused, connect timeout):
    the network is off. Only this one lets an 'auto' data source fall over to the next source."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str  # file name, e.g. 'train-images-idx3-ubyte.gz' (the same name on a mirror)
    url: str  # canonical URL
    size: int  # bytes, published
    sha256: str  # published


# Sizes and sha256s as tensorflow-datasets 4.9 publishes them, copied from its
# tensorflow_datasets/url_checksums/{mnist,fashion_mnist,cifar10}.txt and
# tensorflow_datasets/datasets/tiny_shakespeare/checksums.tsv (columns: url, size, sha256, name).
# tests/test_download.py checks them against the installed package.
_MNIST = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
_FASHION = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
FILES = {
    'mnist': (
        RemoteFile('train-images-idx3-ubyte.gz', _MNIST + 'train-images-idx3-ubyte.gz', 9912422,
                   '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609'),
        RemoteFile('train-labels-idx1-ubyte.gz', _MNIST + 'train-labels-idx1-ubyte.gz', 28881,
                   '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c'),
        RemoteFile('t10k-images-idx3-ubyte.gz', _MNIST + 't10k-images-idx3-ubyte.gz', 1648877,
                   '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6'),
        RemoteFile('t10k-labels-idx1-ubyte.gz', _MNIST + 't10k-labels-idx1-ubyte.gz', 4542,
                   'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6'),
    ),
    'fashion_mnist': (
        RemoteFile('train-images-idx3-ubyte.gz', _FASHION + 'train-images-idx3-ubyte.gz',
                   26421880, '3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84'),
        RemoteFile('train-labels-idx1-ubyte.gz', _FASHION + 'train-labels-idx1-ubyte.gz', 29515,
                   'a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845'),
        RemoteFile('t10k-images-idx3-ubyte.gz', _FASHION + 't10k-images-idx3-ubyte.gz', 4422102,
                   '346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073'),
        RemoteFile('t10k-labels-idx1-ubyte.gz', _FASHION + 't10k-labels-idx1-ubyte.gz', 5148,
                   '67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5'),
    ),
    'cifar10': (
        # The binary version (research/data/cifar.py reads it), not the python pickles.
        RemoteFile('cifar-10-binary.tar.gz',
                   'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz', 170052171,
                   'c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd'),
    ),
    'tiny_shakespeare': (
        RemoteFile('input.txt', 'https://raw.githubusercontent.com/karpathy/char-rnn/master/'
                   'data/tinyshakespeare/input.txt', 1115394,
                   '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'),
    ),
}
# The directory a dataset's tarball unpacks to, which `fetch` returns; absent: files as they are.
UNPACKED = {'cifar10': 'cifar-10-batches-bin'}


def cache_dir() -> str:
    """$DEEPGEN_DATA_DIR if set and non-empty, else $XDG_CACHE_HOME/deepgen, else
    ~/.cache/deepgen."""
    if os.environ.get('DEEPGEN_DATA_DIR'):
        return os.environ['DEEPGEN_DATA_DIR']
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
    return os.path.join(cache, 'deepgen')


def mirror() -> str | None:
    """$DEEPGEN_DATA_MIRROR, a base URL to fetch every file from; None if unset or empty."""
    return os.environ.get('DEEPGEN_DATA_MIRROR') or None


def url(file: RemoteFile) -> str:
    """Where `file` is fetched from: the mirror's copy if there is a mirror, else the canonical
    URL."""
    base = mirror()
    return f'{base.rstrip("/")}/{file.name}' if base else file.url


def cached(dataset: str) -> str | None:
    """The dataset's directory in the cache if every file is already there, else None. Files
    land there only once checksummed, so being there is enough; no network."""
    files = _files(dataset)
    directory = os.path.join(cache_dir(), dataset)
    if dataset in UNPACKED:
        unpacked = os.path.join(directory, UNPACKED[dataset])
        return unpacked if os.path.isdir(unpacked) else None
    if all(os.path.isfile(os.path.join(directory, file.name)) for file in files):
        return directory
    return None


def fetch(dataset: str, *, timeout: float | None = None) -> str:
    """The directory of the dataset's files (module docstring), downloading those the cache
    lacks. `timeout`: seconds allowed for connecting and for each read; None: CONNECT_TIMEOUT_S
    and READ_TIMEOUT_S, read at call time."""
    files = _files(dataset)
    hit = cached(dataset)
    if hit:
        return hit
    directory = os.path.join(cache_dir(), dataset)
    os.makedirs(directory, exist_ok=True)
    for file in files:
        path = os.path.join(directory, file.name)
        if not os.path.isfile(path):
            _download(file, path, timeout)
    if dataset in UNPACKED:
        _unpack(os.path.join(directory, files[0].name), directory, UNPACKED[dataset])
    return cached(dataset)


def _files(dataset: str) -> tuple[RemoteFile, ...]:
    if dataset not in FILES:
        raise ValueError(f'unknown dataset {dataset!r}; downloadable: {", ".join(FILES)}')
    return FILES[dataset]


def _download(file: RemoteFile, path: str, timeout: float | None) -> None:
    """Downloads `file` to `path`, through a temporary file renamed into place once checked."""
    source = url(file)
    connect_timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    read_timeout = READ_TIMEOUT_S if timeout is None else timeout
    logging.info('Downloading %s (%d bytes) to %s', source, file.size, path)
    start = time.monotonic()
    fd, part = tempfile.mkstemp(prefix=f'{file.name}.', suffix='.part',
                                dir=os.path.dirname(path))
    try:
        try:
            with (os.fdopen(fd, 'wb') as out,
                  _open(source, connect_timeout, read_timeout) as response):
                _receive(source, file, response, out, read_timeout)
        except OSError as e:  # from writing: _open and _receive turn theirs into DownloadErrors
            if e.errno != errno.ENOSPC:
                raise
            raise DownloadError(f'{source}: no space left on device writing {path}') from e
        os.replace(part, path)
    except BaseException:  # KeyboardInterrupt too: never leave a partial file behind
        if os.path.exists(part):
            os.remove(part)
        raise
    logging.info('Downloaded %s: %d bytes in %.1f s, to %s', source, file.size,
                 time.monotonic() - start, path)


def _open(source: str, connect_timeout: float, read_timeout: float):
    """The HTTP response for `source`, its headers read; DownloadError if there is none."""
    request = urllib.request.Request(source, headers={'User-Agent': USER_AGENT})
    opener = urllib.request.build_opener(_Handler(connect_timeout))
    try:
        return opener.open(request, timeout=read_timeout)
    except _NoConnection as e:
        raise SourceUnreachable(f'{source}: no connection to {e}') from e
    except urllib.error.HTTPError as e:
        e.close()
        raise DownloadError(f'{source}: HTTP {e.code} {e.reason}') from e
    except urllib.error.URLError as e:  # e.g. a failed TLS handshake: the host was there
        raise DownloadError(f'{source}: {e.reason}') from e
    except TimeoutError as e:
        raise DownloadError(f'{source}: stalled: no response for {read_timeout:g} s') from e
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f'{source}: {type(e).__name__}: {e}') from e


def _receive(source: str, file: RemoteFile, response, out, read_timeout: float) -> None:
    """Copies the response body to `out`, checking it is the file: not an HTML page (a captive
    portal's, say), not cut short, not longer, its sha256 the pinned one."""
    content_type = response.headers.get('Content-Type', '')
    binary = not file.name.endswith('.txt')
    html = DownloadError(f'{source}: got an HTML page (Content-Type {content_type or "not given"}'
                         '), not the file')
    if binary and content_type.startswith('text/html'):
        raise html
    digest, got = hashlib.sha256(), 0
    while True:
        try:  # one byte more than the file has, to notice a longer body
            chunk = response.read(min(_CHUNK, file.size + 1 - got))
        except TimeoutError as e:
            raise DownloadError(f'{source}: stalled: no data for {read_timeout:g} s (got {got} '
                                f'of {file.size} bytes)') from e
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f'{source}: connection lost: got {got} of {file.size} bytes '
                                f'({type(e).__name__}: {e})') from e
        if not chunk:
            break
        if binary and got == 0 and chunk.lstrip().startswith(b'<'):
            raise html
        digest.update(chunk)
        out.write(chunk)
        got += len(chunk)
        if got > file.size:
            raise DownloadError(f'{source}: longer than the {file.size} bytes expected')
    if got < file.size:
        raise DownloadError(f'{source}: truncated: got {got} of {file.size} bytes')
    if digest.hexdigest() != file.sha256:
        raise DownloadError(f'{source}: expected sha256 {file.sha256}, got {digest.hexdigest()}')


class _NoConnection(Exception):
    """Raised by a connection's connect: no connection could be made (the message says to what
    and why). Not an OSError, so urllib passes it through rather than wrapping it."""


class _BoundedConnect:
    """For http.client's connections: connect() (DNS lookup, TCP, TLS handshake, a proxy's
    tunnel) bounded as a whole by `connect_timeout` seconds. The socket timeout alone does not
    cover the DNS lookup, which can hang far longer on a machine with a dead resolver; so the
    attempt runs in a daemon thread, as in research/data/tfds_probe.py."""

    def __init__(self, *args, connect_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout

    def connect(self):
        connect, outcome = super().connect, []

        def attempt():
            try:
                connect()
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread
                outcome.append(e)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(self.connect_timeout)
        where = f'{self.host}:{self.port}'
        if not outcome:
            raise _NoConnection(f'{where} within {self.connect_timeout:g} s')
        error = outcome[0]
        if isinstance(error, ssl.SSLError):  # connected, then TLS failed: not offline
            raise error
        if isinstance(error, OSError):
            raise _NoConnection(f'{where}: {error}') from error
        if error is not None:
            raise error


class _HTTPConnection(_BoundedConnect, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_BoundedConnect, http.client.HTTPSConnection):
    pass


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's handlers of http:// and https:// URLs, connecting with _BoundedConnect."""

    def __init__(self, connect_timeout: float):
        urllib.request.HTTPSHandler.__init__(self)
        self.connect_timeout = connect_timeout

    def http_open(self, req):
        return self.do_open(_HTTPConnection, req, connect_timeout=self.connect_timeout)

    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, connect_timeout=self.connect_timeout)


def _unpack(tarball: str, directory: str, top: str) -> None:
    """Unpacks `tarball`'s `top`/ into `directory`, atomically: into a temporary directory beside
    it, then renamed into place. A tarball that cannot be unpacked is deleted (so the next fetch
    downloads it again) and raises DownloadError naming it."""
    temp = tempfile.mkdtemp(prefix=f'{top}.', suffix='.part', dir=directory)
    try:
        try:
            with tarfile.open(tarball, 'r:gz') as tar:
                for member in tar.getmembers():
                    if (os.path.isabs(member.name) or '..' in member.name.split('/')
                            or not (member.isfile() or member.isdir())):
                        raise tarfile.TarError(f'refusing member {member.name!r}')
                # The 'data' filter (Python 3.12, backported to 3.10.12 and 3.11.4) also
                # refuses anything that would land outside `temp`.
                safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
                tar.extractall(temp, **safe)
            if not os.path.isdir(os.path.join(temp, top)):
                raise tarfile.TarError(f'it holds no {top}/')
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
            os.remove(tarball)
            raise DownloadError(f'{tarball}: cannot unpack ({type(e).__name__}: {e}); deleted '
                                'it') from e
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise DownloadError(f'no space left on device unpacking {tarball}') from e
        try:
            os.rename(os.path.join(temp, top), os.path.join(directory, top))
        except OSError:
            if not os.path.isdir(os.path.join(directory, top)):
                raise
            # Another process unpacked it first; theirs is as good as ours.
        logging.info('Unpacked %s into %s', tarball, os.path.join(directory, top))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
