"""The run's config in the workdir, so a resumed run says what changed since it started."""
import json
import os

import jax
from absl import logging


def _flatten(tree: dict, prefix: str = '') -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def save_config(config, workdir: str) -> dict:
    """Writes workdir/config.json; returns {key: (old, new)} for keys changed since last time."""
    path = os.path.join(workdir, 'config.json')
    new = json.loads(config.to_json())
    changed = {}
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            old = _flatten(json.load(f))
        flat_new = _flatten(new)
        changed = {k: (old.get(k), flat_new.get(k)) for k in old.keys() | flat_new.keys()
                   if old.get(k) != flat_new.get(k)}
        for key, (was, now) in sorted(changed.items()):
            logging.warning('config.%s changed since this workdir was started: %r -> %r',
                            key, was, now)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(new, f, indent=2)
    return changed
