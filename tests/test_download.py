"""Tests for research/data/download.py, against an HTTP server of our own on 127.0.0.1: every test
points $DEEPGEN_DATA_MIRROR at it (or at a closed port), so none touches the real network."""
import errno
import hashlib
import http.server
import importlib.util
import io
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from research import data
from research.data import cifar, download, readers, write_idx

SHARED_CORPUS = Path(__file__).resolve().parents[2] / 'shared/data/tinyshakespeare/input.txt'
SHAKESPEARE = download.FILES['tiny_shakespeare'][0]


# A server whose every answer the test decides: routes maps a path to a function of the
# request handler; anything else is a 404.

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        self.server.routes.get(self.path, status(404))(self)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that hung up early is what some tests do


def serve(body, content_type='application/octet-stream', length=None, sent=None,
          pause=lambda handler: None):
    """An answer: 200, Content-Length `length` (default the body's), then `sent` bytes of the
    body (default all), calling `pause` after the headers."""
    def respond(handler):
        handler.send_response(200)
        handler.send_header('Content-Type', content_type)
        handler.send_header('Content-Length', str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.flush()
        pause(handler)
        handler.wfile.write(body[:sent])
    return respond


def status(code):
    return lambda handler: handler.send_error(code)


def stall(handler):
    handler.server.release.wait(10)  # until the test is over


@pytest.fixture
def server(monkeypatch, tmp_path):
    httpd = _Server(('127.0.0.1', 0), _Handler)
    httpd.routes, httpd.requests, httpd.release = {}, [], threading.Event()
    httpd.url = f'http://127.0.0.1:{httpd.server_address[1]}/data'
    httpd.cache = tmp_path / 'cache'
    monkeypatch.setenv('DEEPGEN_DATA_MIRROR', httpd.url)
    monkeypatch.setenv('DEEPGEN_DATA_DIR', str(httpd.cache))
    for name in list(os.environ):  # a proxy would stand between us and 127.0.0.1
        if name.lower().endswith('_proxy'):
            monkeypatch.delenv(name)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def route(server, file, respond):
    server.routes[f'/data/{file.name}'] = respond


def files_in(directory):
    return sorted(str(Path(root, name).relative_to(directory))
                  for root, _, names in os.walk(directory) for name in names)


def table(files):
    """RemoteFiles for {name: bytes}, with their own sizes and sha256s."""
    return tuple(download.RemoteFile(name, f'https://example.invalid/{name}', len(data),
                                     hashlib.sha256(data).hexdigest())
                 for name, data in files.items())


def random_cifar(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def cifar_tarball(tmp_path, splits):
    top = tmp_path / 'build' / 'cifar-10-batches-bin'
    top.mkdir(parents=True)
    for names, (images, labels) in splits:
        for i, name in enumerate(names):
            part = slice(2 * i, 2 * i + 2)
            cifar.write_binary_batch(str(top / name), images[part], labels[part])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        tar.add(top, arcname='cifar-10-batches-bin')
    return buffer.getvalue()


# The pinned table.

def test_the_pinned_table_covers_the_four_datasets():
    assert list(download.FILES) == ['mnist', 'fashion_mnist', 'cifar10', 'tiny_shakespeare']
    assert [f.name for f in download.FILES['cifar10']] == ['cifar-10-binary.tar.gz']
    assert download.FILES['cifar10'][0].size == 170_052_171
    for files in download.FILES.values():
        for file in files:
            assert file.url.endswith('/' + file.name) and len(file.sha256) == 64


def test_the_tiny_shakespeare_checksum_is_the_shared_copys():
    if not SHARED_CORPUS.is_file():
        pytest.skip(f'{SHARED_CORPUS} is absent (it exists on dev/CI machines only)')
    data = SHARED_CORPUS.read_bytes()
    assert (SHAKESPEARE.size, SHAKESPEARE.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_the_pinned_checksums_are_those_tfds_publishes():
    spec = importlib.util.find_spec('tensorflow_datasets')  # found, not imported (slow)
    if spec is None:
        pytest.skip('tensorflow-datasets is not installed')
    root = Path(spec.submodule_search_locations[0])
    lists = {name: root / 'url_checksums' / f'{name}.txt'
             for name in ('mnist', 'fashion_mnist', 'cifar10')}
    lists['tiny_shakespeare'] = root / 'datasets' / 'tiny_shakespeare' / 'checksums.tsv'
    for dataset, path in lists.items():
        published = sorted(tuple(line.split('\t')) for line in path.read_text().splitlines()
                           if line.strip() and not line.startswith('#'))
        pinned = sorted((f.url, str(f.size), f.sha256, f.name) for f in download.FILES[dataset])
        assert pinned == published, path


# Where files come from and go.

def test_cache_dir_and_mirror_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('HOME', str(tmp_path))
    for name in ('DEEPGEN_DATA_DIR', 'XDG_CACHE_HOME', 'DEEPGEN_DATA_MIRROR'):
        monkeypatch.setenv(name, '')  # empty counts as unset
    assert download.cache_dir() == str(tmp_path / '.cache' / 'deepgen')
    assert download.mirror() is None and download.url(SHAKESPEARE) == SHAKESPEARE.url
    monkeypatch.setenv('XDG_CACHE_HOME', '/xdg')
    assert download.cache_dir() == '/xdg/deepgen'
    monkeypatch.setenv('DEEPGEN_DATA_DIR', '/data')
    assert download.cache_dir() == '/data'
    monkeypatch.setenv('DEEPGEN_DATA_MIRROR', 'http://mirror.lan/deepgen/')
    assert download.url(SHAKESPEARE) == 'http://mirror.lan/deepgen/input.txt'


# Good downloads.

def test_tiny_shakespeare_is_downloaded_and_then_served_from_the_cache(server):
    if not SHARED_CORPUS.is_file():
        pytest.skip(f'{SHARED_CORPUS} is absent (it exists on dev/CI machines only)')
    route(server, SHAKESPEARE, serve(SHARED_CORPUS.read_bytes(), 'text/plain'))
    assert download.cached('tiny_shakespeare') is None
    directory = download.fetch('tiny_shakespeare', timeout=2)
    assert directory == str(server.cache / 'tiny_shakespeare')
    assert (Path(directory) / 'input.txt').read_bytes() == SHARED_CORPUS.read_bytes()
    assert files_in(server.cache) == ['tiny_shakespeare/input.txt']  # no temporary left
    assert server.requests == ['/data/input.txt']  # from the mirror
    # A cache hit: no request at all.
    assert download.fetch('tiny_shakespeare') == directory
    assert download.cached('tiny_shakespeare') == directory
    assert server.requests == ['/data/input.txt']


def test_idx_files_are_fetched_for_the_reader_and_only_the_missing_ones(server, monkeypatch,
                                                                        tmp_path):
    rng = np.random.default_rng(0)
    arrays = {'train-images-idx3-ubyte.gz': rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
              'train-labels-idx1-ubyte.gz': np.arange(6, dtype=np.uint8),
              't10k-images-idx3-ubyte.gz': rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              't10k-labels-idx1-ubyte.gz': np.arange(3, dtype=np.uint8)}
    blobs = {}
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)  # gzipped, the name ending in .gz
        blobs[name] = (tmp_path / name).read_bytes()
    assert blobs['t10k-labels-idx1-ubyte.gz'].startswith(b'\x1f\x8b')
    monkeypatch.setitem(download.FILES, 'mnist', table(blobs))
    for file in download.FILES['mnist']:
        route(server, file, serve(blobs[file.name]))
    directory = download.fetch('mnist', timeout=2)
    images, labels = readers.IdxFiles().read(directory, 'train')
    np.testing.assert_array_equal(images[..., 0], arrays['train-images-idx3-ubyte.gz'])
    np.testing.assert_array_equal(labels, np.arange(6))
    assert readers.IdxFiles().read(directory, 'test')[0].shape == (3, 28, 28, 1)
    assert len(server.requests) == 4
    os.remove(Path(directory) / 't10k-labels-idx1-ubyte.gz')
    assert download.cached('mnist') is None
    assert download.fetch('mnist', timeout=2) == directory
    assert server.requests[4:] == ['/data/t10k-labels-idx1-ubyte.gz']


def test_cifar10_tarball_is_unpacked_into_binary_batches(server, monkeypatch, tmp_path):
    train, test = random_cifar(10, seed=1), random_cifar(2, seed=2)
    blob = cifar_tarball(tmp_path, [(cifar.BINARY_FILES['train'], train),
                                    (cifar.BINARY_FILES['test'], test)])
    monkeypatch.setitem(download.FILES, 'cifar10', table({'cifar-10-binary.tar.gz': blob}))
    route(server, download.FILES['cifar10'][0], serve(blob, 'application/x-gzip'))
    directory = download.fetch('cifar10', timeout=2)
    assert directory == str(server.cache / 'cifar10' / 'cifar-10-batches-bin')
    assert download.cached('cifar10') == directory
    images, labels = cifar.read_split(directory, 'train')
    np.testing.assert_array_equal(images, train[0])
    np.testing.assert_array_equal(labels, train[1])
    np.testing.assert_array_equal(cifar.read_split(directory, 'test')[0], test[0])
    assert sorted(os.listdir(server.cache / 'cifar10')) == ['cifar-10-batches-bin',
                                                            'cifar-10-binary.tar.gz']
    os.remove(server.cache / 'cifar10' / 'cifar-10-binary.tar.gz')  # to save the space
    assert download.fetch('cifar10') == directory and len(server.requests) == 1


def test_cifar_reads_binary_batches_and_prefers_the_python_ones(tmp_path):
    images, labels = random_cifar(3, seed=3)
    cifar.write_binary_batch(str(tmp_path / 'test_batch.bin'), images, labels)
    raw = (tmp_path / 'test_batch.bin').read_bytes()
    assert len(raw) == 3 * 3073 and raw[0] == labels[0]
    assert raw[1:1025] == images[0, :, :, 0].tobytes()  # the red plane, row-major
    assert cifar.missing_files(str(tmp_path), 'test') == []
    np.testing.assert_array_equal(cifar.read_split(str(tmp_path), 'test')[0], images)
    cifar.write_batch(str(tmp_path / 'test_batch'), images[:1], labels[:1])
    assert len(cifar.read_split(str(tmp_path), 'test')[0]) == 1  # python, when both are whole
    # Only some binary files: the missing ones are named in the binary version's names.
    cifar.write_binary_batch(str(tmp_path / 'data_batch_1.bin'), images, labels)
    assert cifar.missing_files(str(tmp_path), 'train') == [f'data_batch_{i}.bin'
                                                           for i in range(2, 6)]
    assert 'data_batch_1.bin .. data_batch_5.bin' in cifar.describe_files('train')
    (tmp_path / 'short.bin').write_bytes(raw[:-1])
    with pytest.raises(cifar.CifarError, match=r'short.bin: not a CIFAR-10 binary batch \(9218 '):
        cifar.read_binary_batch(str(tmp_path / 'short.bin'))
    (tmp_path / 'label.bin').write_bytes(b'\x0a' + raw[1:])
    with pytest.raises(cifar.CifarError, match=r'label.bin: labels must lie in 0..9, found'):
        cifar.read_binary_batch(str(tmp_path / 'label.bin'))


def test_two_fetches_of_one_file_at_once_both_succeed(server, monkeypatch):
    body = b'x' * 1000
    monkeypatch.setitem(download.FILES, 'tiny_shakespeare', table({'input.txt': body}))
    both_in_flight = threading.Barrier(2, timeout=5)

    def respond(handler):  # half, then the rest once the other download has its half too
        serve(body, sent=500)(handler)
        both_in_flight.wait()
        handler.wfile.write(body[500:])

    route(server, download.FILES['tiny_shakespeare'][0], respond)
    results, errors = [], []

    def fetch():
        try:
            results.append(download.fetch('tiny_shakespeare', timeout=5))
        except Exception as e:  # noqa: BLE001 -- the test looks at every one
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and len(results) == 2 and len(server.requests) == 2
    assert files_in(server.cache) == ['tiny_shakespeare/input.txt']
    assert (server.cache / 'tiny_shakespeare' / 'input.txt').read_bytes() == body


# Bad downloads: a one-line DownloadError naming the URL and what was wrong, nothing left behind.

BAD_SHAKESPEARE = {
    'a 404': (status(404), r'HTTP 404 Not Found'),
    'the wrong bytes': (serve(b'x' * SHAKESPEARE.size, 'text/plain'),
                        (f'expected sha256 {SHAKESPEARE.sha256}, got '
                         f'{hashlib.sha256(b"x" * SHAKESPEARE.size).hexdigest()}')),
    'closed early': (serve(b'x' * SHAKESPEARE.size, sent=1000),
                     f'truncated: got 1000 of {SHAKESPEARE.size} bytes'),
    'a short Content-Length': (serve(b'x' * 1000), f'truncated: got 1000 of {SHAKESPEARE.size}'),
    'a longer body': (serve(b'x' * (SHAKESPEARE.size + 5)), 'longer than the 1115394 bytes'),
    'a stall after the headers': (serve(b'x' * SHAKESPEARE.size, pause=stall),
                                  r'stalled: no data for 1 s \(got 0 of 1115394 bytes\)'),
    'a stall before the headers': (stall, 'stalled: no response for 1 s'),
}


@pytest.mark.parametrize('respond, message', BAD_SHAKESPEARE.values(), ids=BAD_SHAKESPEARE)
def test_a_bad_download_says_what_was_wrong_and_leaves_nothing(server, respond, message):
    route(server, SHAKESPEARE, respond)
    start = time.monotonic()
    with pytest.raises(download.DownloadError, match=message) as raised:
        download.fetch('tiny_shakespeare', timeout=1)
    assert time.monotonic() - start < 5
    assert not isinstance(raised.value, download.SourceUnreachable)  # the host was there
    text = str(raised.value)
    assert text.startswith(f'{server.url}/input.txt: ') and '\n' not in text  # the mirror's URL
    assert files_in(server.cache) == []
    assert download.cached('tiny_shakespeare') is None


HTML = {
    'Content-Type text/html': (serve(b'Log in to the Wi-Fi', 'text/html; charset=utf-8'),
                               (r'got an HTML page \(Content-Type text/html; charset=utf-8\), '
                                'not the file')),
    'HTML bytes': (serve(b'\n<html><p>Log in to the Wi-Fi</p></html>'),
                   r'got an HTML page \(Content-Type application/octet-stream\), not the file'),
}


@pytest.mark.parametrize('respond, message', HTML.values(), ids=HTML)
def test_an_html_page_instead_of_a_gzip_is_named_as_such(server, respond, message):
    file = download.FILES['mnist'][0]
    route(server, file, respond)
    with pytest.raises(download.DownloadError, match=message) as raised:
        download.fetch('mnist', timeout=1)
    assert str(raised.value).startswith(f'{server.url}/{file.name}: ')
    assert files_in(server.cache) == [] and server.requests == [f'/data/{file.name}']


class _FullDisk(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, 'No space left on device')


class _Interrupted(io.FileIO):
    def write(self, data):
        raise KeyboardInterrupt


@pytest.mark.parametrize('file_class, error, message', [
    (_FullDisk, download.DownloadError,
     r'input.txt: no space left on device writing .*tiny_shakespeare/input.txt$'),
    (_Interrupted, KeyboardInterrupt, None),
], ids=['a full disk', 'Ctrl-C'])
def test_a_failed_write_leaves_nothing(server, monkeypatch, file_class, error, message):
    route(server, SHAKESPEARE, serve(b'x' * SHAKESPEARE.size))
    with monkeypatch.context() as patch, pytest.raises(error, match=message):
        patch.setattr(download.os, 'fdopen', lambda fd, mode: file_class(fd, mode))
        download.fetch('tiny_shakespeare', timeout=1)
    assert files_in(server.cache) == []


@pytest.mark.parametrize('blob, message', [
    (b'\x1f\x8b' + b'\0' * 100, 'cannot unpack'),
    (None, r'cannot unpack \(TarError: it holds no cifar-10-batches-bin/\); deleted it$'),
], ids=['corrupt', 'no batches directory'])
def test_a_tarball_that_cannot_be_unpacked_is_named_and_deleted(server, monkeypatch, blob,
                                                                message):
    if blob is None:  # a good tarball of something else
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
            tar.addfile(tarfile.TarInfo('README'), io.BytesIO(b''))
        blob = buffer.getvalue()
    monkeypatch.setitem(download.FILES, 'cifar10', table({'cifar-10-binary.tar.gz': blob}))
    route(server, download.FILES['cifar10'][0], serve(blob))
    with pytest.raises(download.DownloadError, match=message) as raised:
        download.fetch('cifar10', timeout=1)
    assert str(raised.value).startswith(str(server.cache / 'cifar10' / 'cifar-10-binary.tar.gz'))
    assert files_in(server.cache) == [] and download.cached('cifar10') is None


def test_a_tarball_member_outside_its_directory_is_refused(server, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        tar.addfile(tarfile.TarInfo('cifar-10-batches-bin/../../escaped'), io.BytesIO(b''))
    blob = buffer.getvalue()
    monkeypatch.setitem(download.FILES, 'cifar10', table({'cifar-10-binary.tar.gz': blob}))
    route(server, download.FILES['cifar10'][0], serve(blob))
    with pytest.raises(download.DownloadError, match="refusing member 'cifar-10-batches-bin/"):
        download.fetch('cifar10', timeout=1)
    assert files_in(server.cache.parent) == []


# Offline: SourceUnreachable, within seconds.

def test_a_refused_connection_is_unreachable(server, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv('DEEPGEN_DATA_MIRROR', f'http://127.0.0.1:{port}')
    with pytest.raises(download.SourceUnreachable,
                       match=f'^http://127.0.0.1:{port}/input.txt: no connection to '
                             f'127.0.0.1:{port}: .*[Rr]efused'):
        download.fetch('tiny_shakespeare')
    assert files_in(server.cache) == []


def test_a_failed_tls_handshake_is_a_download_error_not_unreachable(server, monkeypatch):
    # Our server speaks plain HTTP, so the host is there but no TLS session can be made.
    monkeypatch.setenv('DEEPGEN_DATA_MIRROR', server.url.replace('http:', 'https:'))
    with pytest.raises(download.DownloadError, match=r'^https://127.0.0.1:.*/input.txt: .*SSL'
                       ) as raised:
        download.fetch('tiny_shakespeare', timeout=1)
    assert not isinstance(raised.value, download.SourceUnreachable)
    assert files_in(server.cache) == []


def test_a_hanging_connect_fails_within_the_connect_timeout(server, monkeypatch):
    assert download.CONNECT_TIMEOUT_S == 3.0
    monkeypatch.setattr(download, 'CONNECT_TIMEOUT_S', 1.0)  # read at call time

    def hang(*args, **kwargs):  # as a dead DNS resolver does
        server.release.wait(10)
        raise OSError('the test is over')

    monkeypatch.setattr(socket, 'create_connection', hang)
    start = time.monotonic()
    with pytest.raises(download.SourceUnreachable,
                       match=f'^{server.url}/input.txt: no connection to 127.0.0.1:'
                             f'{server.server_address[1]} within 1 s$'):
        download.fetch('tiny_shakespeare')
    assert 0.9 < time.monotonic() - start < 5
    assert server.requests == [] and files_in(server.cache) == []


# As a source of research.data.load.

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def mnist_mirror(server, monkeypatch, tmp_path, n=6):
    """A mirror of a small MNIST (n training, 3 test images) with a pinned table of its own."""
    rng = np.random.default_rng(1)
    arrays = {'train-images-idx3-ubyte.gz': rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
              'train-labels-idx1-ubyte.gz': np.arange(n, dtype=np.uint8) % 10,
              't10k-images-idx3-ubyte.gz': rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              't10k-labels-idx1-ubyte.gz': np.arange(3, dtype=np.uint8)}
    blobs = {}
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)
        blobs[name] = (tmp_path / name).read_bytes()
    monkeypatch.setitem(download.FILES, 'mnist', table(blobs))
    for file in download.FILES['mnist']:
        route(server, file, serve(blobs[file.name]))
    monkeypatch.delenv('DEEPGEN_MNIST_DIR', raising=False)
    return arrays


def test_auto_serves_the_download_before_the_embedded_sample(server, monkeypatch, tmp_path):
    arrays = mnist_mirror(server, monkeypatch, tmp_path)
    split = data.load('mnist', 'train')
    assert split.kind == 'download' and len(split.labels) == 6
    assert split.source == f'IDX files downloaded to {server.cache / "mnist"}'
    np.testing.assert_array_equal(split.images[..., 0], arrays['train-images-idx3-ubyte.gz'])
    assert {'dataset': 'mnist', 'split': 'train', 'source': 'download',
            'where': split.source, 'examples': 6} in data.loaded()
    assert data.load('mnist', 'test', source='download').kind == 'download'
    assert len(server.requests) == 4  # the test split came from the cache


def test_a_bad_download_is_an_error_not_a_fallback(server, monkeypatch, tmp_path):
    mnist_mirror(server, monkeypatch, tmp_path)
    route(server, download.FILES['mnist'][0], status(500))
    with pytest.raises(data.DatasetUnavailableError,
                       match=f'mnist/train: download failed: {server.url}/'
                             'train-images-idx3-ubyte.gz: HTTP 500'):
        data.load('mnist', 'train')
    assert files_in(server.cache) == []


def test_forcing_the_download_offline_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv('DEEPGEN_DATA_MIRROR', f'http://127.0.0.1:{free_port()}')
    monkeypatch.setenv('DEEPGEN_DATA_DIR', str(tmp_path))
    with pytest.raises(data.DatasetUnavailableError) as e:
        data.load('mnist', 'train', source='download')
    assert str(e.value).startswith("mnist/train is not available (source 'download' was asked "
                                   'for). Tried:\n  - download: offline: http://127.0.0.1:')
