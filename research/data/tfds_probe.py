"""Whether tensorflow-datasets can serve a dataset right now, decided in seconds.

Without network tfds retries its downloads for minutes before failing (DATA.md measured about
205 s), so every source that might use tfds asks `tfds_available` first and calls tfds only on
a yes: images (research/data/datasets.py) and text (research/data/text.py) alike.
"""
import glob
import importlib.util
import os
import socket
import threading

TFDS_CONNECT_TIMEOUT_S = 3.0


def tfds_available(tfds_name: str, host: str, port: int,
                   timeout: float | None = None) -> tuple[bool, str]:
    """(ok, why): tfds can serve `tfds_name` if TensorFlow is installed and the dataset is either
    prepared in $TFDS_DATA_DIR (default ~/tensorflow_datasets) or its download host answers on
    `port` within `timeout` seconds (None: TFDS_CONNECT_TIMEOUT_S, read at call time)."""
    if importlib.util.find_spec('tensorflow') is None:
        return False, 'TensorFlow is not installed (tfds needs it to read data)'
    data_dir = os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')
    # A prepared dataset lives in <data_dir>/<name>[/<config>]/<version>/.
    prepared = (glob.glob(os.path.join(data_dir, tfds_name, '*', 'dataset_info.json'))
                + glob.glob(os.path.join(data_dir, tfds_name, '*', '*', 'dataset_info.json')))
    if prepared:
        return True, f'already prepared in {data_dir}'
    failure = connect_failure(host, port, TFDS_CONNECT_TIMEOUT_S if timeout is None else timeout)
    if failure:
        return False, (f'not prepared in {data_dir} and download host {host}:{port} '
                       f'unreachable ({failure})')
    return True, f'downloadable from {host}'


def connect_failure(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails, or None if it succeeds, within `timeout` s."""
    outcome = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(str(e))

    # The socket timeout does not cover the DNS lookup, which can hang for much longer on a
    # cluster with a dead resolver; bound the whole probe.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f'no connection within {timeout:g} s'
