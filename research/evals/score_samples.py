"""Scores generated images against real data with a dataset's pinned judge: one JSON line.

    python -m research.evals.score_samples runs/gan_mnist/samples.npz --dataset mnist
    python -m research.evals.score_samples --floor --dataset mnist \
        --test-dir ../shared/data/mnist-t10k
    python -m research.evals.score_samples --floor --dataset fashion_mnist

The samples file is an .npz with key `images`: uint8 (N, H, W, C), as the GAN and VAE
experiments write it. The line holds the Frechet distance (`fid`) and kernel distance (`kid`,
`kid_std`) between the judge's penultimate features of the samples and of the real reference
images, and the classifier score of the samples (see research/evals/sample_quality.py).

The reference is the real training split by default (`--reference-split train`): the data the
generative models learn from, and how the GAN literature computes FID. `--floor` scores real
test images (`--test-dir` names their IDX directory) against that same reference instead of a
samples file: what a perfect generator would get at that sample size, the floor to quote beside
a model's numbers. FID falls as N grows, so compare numbers at equal N (the experiments write
10,000 samples); KID is unbiased at any N.

Samples of a class-conditional generator carry the class each was asked for (key `labels`,
int (N,)); for them, and for `--floor`'s real images with their true classes, the line also
holds the conditional accuracy (the judge's accuracy at recognising the requested class: its
test accuracy on real images with their true labels, 1/K at chance) and the Frechet distance of
each class's samples to the reference images of that class (`fid_per_class`, and their mean),
from `conditional_scores`.

`score_images` is the same as a library call, for experiments to run at the end of training;
the reference features are computed once per process for each (dataset, split, data source,
judge).

`--workdir DIR` makes the scoring a run of its own, as a training run's workdir is: DIR gets
run_info.json (commit, machine, date), metrics.jsonl (the scores as `scores/...` at step 0) and
scores.json (the whole line), so `python -m research.report.results record DIR RECORD` can make
a README row of it (the floors are rows so).
"""
import dataclasses
import json
import os
import time

import numpy as np
from absl import logging

from research import data, errors
from research.data import DATASETS
from research.errors import ConfigError, InputError
from research.evals.sample_quality import (classifier_score, feature_stats, frechet_distance,
                                           kernel_distance)

KID_SUBSET_SIZE = 1000
CLASSIFIER_SCORE_SPLITS = 10


@dataclasses.dataclass(frozen=True)
class _Reference:
    features: np.ndarray  # (N, F) float64
    image_shape: tuple  # (H, W, C) of the real images
    mean: np.ndarray
    cov: np.ndarray
    description: str  # which real data, e.g. 'mnist/train, 5000 images: <source>'
    labels: np.ndarray | None = None  # int (N,), for per-class distances


_REFERENCES: dict[tuple, _Reference] = {}  # per-process cache, see _reference


def score_images(images: np.ndarray, dataset: str, *, reference_images: np.ndarray | None = None,
                 reference_split: str = 'train', data_dir: str | None = None, judge=None,
                 kid_subsets: int = 100) -> dict:
    """FID, KID and classifier score of uint8 (N, H, W, C) `images` under `dataset`'s judge.

    The reference is `reference_images` if given, else `research.data.load(dataset,
    reference_split, data_dir)`. `judge` defaults to `research.evals.judge.load_judge(dataset)`;
    anything with its interface (`dataset`, `sha256`, `info`, `features`, `probs`) will do.
    """
    _check_images(images, 'images')  # before the seconds of loading the judge and the reference
    judge = _judge(dataset, judge)
    if reference_images is not None:
        _check_images(reference_images, 'reference_images')
        reference = _featurize(judge, reference_images,
                               f'reference_images argument, {len(reference_images)} images')
    else:
        reference = _reference(judge, dataset, reference_split, data_dir)
    if images.shape[1:] != reference.image_shape:
        raise ConfigError(f'images have shape {images.shape[1:]} per image, the {dataset} '
                          f'reference {reference.image_shape}')
    features = judge.features(images)
    kid, kid_std = kernel_distance(features, reference.features, subsets=kid_subsets,
                                   subset_size=KID_SUBSET_SIZE)
    score, score_std = classifier_score(judge.probs(images), CLASSIFIER_SCORE_SPLITS)
    return {'n': len(images), 'dataset': dataset, 'judge_sha256': judge.sha256,
            'judge_test_accuracy': judge.info['test_accuracy'],
            'reference': reference.description,
            'fid': frechet_distance(*feature_stats(features), reference.mean, reference.cov),
            'kid': kid, 'kid_std': kid_std,
            'classifier_score': score, 'classifier_score_std': score_std}


def conditional_scores(images: np.ndarray, labels: np.ndarray, dataset: str, *,
                       reference_images: np.ndarray | None = None,
                       reference_labels: np.ndarray | None = None,
                       reference_split: str = 'train', data_dir: str | None = None,
                       judge=None) -> dict:
    """How well uint8 (N, H, W, C) `images` match the classes `labels` (int (N,)) they were
    generated for, under `dataset`'s judge: `conditional_accuracy`, the fraction the judge
    assigns to their requested class, and `fid_per_class`, the Frechet distance of each class's
    images to the reference images of that class (and `fid_class_mean`, their mean). The
    reference is as in `score_images` (`reference_labels` go with `reference_images`)."""
    _check_images(images, 'images')
    labels = np.asarray(labels)
    num_classes = len(DATASETS[dataset].class_names)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f'labels must be integers of shape ({len(images)},) like the images, '
                         f'found {labels.dtype} of shape {labels.shape}')
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f'labels must lie in [0, {num_classes}) for {dataset}, found '
                         f'{labels.min()}..{labels.max()}')
    judge = _judge(dataset, judge)
    if reference_images is not None:
        if reference_labels is None or len(reference_labels) != len(reference_images):
            raise ConfigError('reference_images need reference_labels, one per image')
        reference = _featurize(judge, reference_images, 'reference_images argument',
                               np.asarray(reference_labels))
    else:
        reference = _reference(judge, dataset, reference_split, data_dir)
    features, predicted = judge.features(images), judge.probs(images).argmax(axis=1)
    per_class = []
    for k in range(num_classes):
        mine, real = features[labels == k], reference.features[reference.labels == k]
        if len(mine) < 2 or len(real) < 2:
            raise InputError(f'class {k} has {len(mine)} samples and {len(real)} reference '
                             'images; a per-class Frechet distance needs at least 2 of each')
        per_class.append(frechet_distance(*feature_stats(mine), *feature_stats(real)))
    return {'n': len(images), 'conditional_accuracy': float(np.mean(predicted == labels)),
            'fid_per_class': per_class, 'fid_class_mean': float(np.mean(per_class))}


def score_metrics(images: np.ndarray, dataset: str, labels: np.ndarray | None = None, *,
                  prefix: str = 'scores/', reference_labels: np.ndarray | None = None,
                  **kwargs) -> dict:
    """`score_images` as metrics for a training run: {'scores/fid': ..., ...}, scalars only;
    the judge and the reference data go to the log. `prefix` names them ('validation/' for
    scores against validation images); `reference_labels` go with `reference_images` to the
    conditional scores."""
    result = score_images(images, dataset, **kwargs)
    logging.info('scored %d samples with the %s judge (sha256 %s...) against %s', result['n'],
                 dataset, result['judge_sha256'][:12], result['reference'])
    metrics = {prefix + key: result[key] for key in
               ('fid', 'kid', 'kid_std', 'classifier_score', 'classifier_score_std')}
    if labels is not None:  # a conditional generator's samples: how well they match the class
        per = conditional_scores(images, labels, dataset, reference_labels=reference_labels,
                                 **kwargs)
        metrics[prefix + 'conditional_accuracy'] = per['conditional_accuracy']
        metrics[prefix + 'fid_class_mean'] = per['fid_class_mean']
        metrics.update({f'{prefix}fid_class_{k}': v for k, v in enumerate(per['fid_per_class'])})
    return metrics


def load_samples(path: str, key: str = 'images') -> np.ndarray:
    """The uint8 (N, H, W, C) array under `key` in the .npz file `path`, or a clear error."""
    try:
        archive = np.load(path, allow_pickle=False)
    except OSError as e:
        raise InputError(f'{path}: cannot be read ({e.strerror or e})') from e
    except ValueError as e:  # neither .npz nor .npy, or a pickled .npy
        raise InputError(f'{path}: not an .npz archive ({e})') from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f'{path}: holds a single .npy array {archive.dtype} {archive.shape}, '
                         f'not an .npz archive with key {key!r}')
    with archive:
        if key not in archive.files:
            raise InputError(f'{path}: no key {key!r}; keys found: {archive.files or "none"}')
        try:
            images = archive[key]
        except ValueError as e:  # object arrays need pickle, which we never load
            raise InputError(f'{path}: key {key!r} cannot be read: {e}') from e
    _check_images(images, f'{path}: key {key!r}')
    return images


def load_labels(path: str, key: str = 'labels') -> np.ndarray | None:
    """The requested classes under `key` in the .npz file `path` (a conditional generator's
    samples), or None when it has none; read after `load_samples` has checked the file."""
    with np.load(path, allow_pickle=False) as archive:
        return archive[key] if key in archive.files else None


def _check_images(images, what: str):
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        found = (f'{images.dtype} of shape {images.shape}' if isinstance(images, np.ndarray)
                 else type(images).__name__)
        raise InputError(f'{what} must be uint8 images of shape (N, H, W, C), found {found}')
    if len(images) < CLASSIFIER_SCORE_SPLITS:
        raise InputError(f'{what} holds {len(images)} images; scoring needs at least '
                         f'{CLASSIFIER_SCORE_SPLITS} (the classifier score splits)')


def _judge(dataset: str, judge):
    """`judge`, or the pinned one for `dataset`; refuses a judge of another dataset."""
    if judge is None:
        from research.evals.judge import load_judge  # imports jax and flax; only when needed

        judge = load_judge(dataset)
    if judge.dataset != dataset:
        raise ConfigError(f'the judge was trained on {judge.dataset!r}, not on {dataset!r}')
    return judge


def _reference(judge, dataset: str, split: str, data_dir: str | None) -> '_Reference':
    """The judge's features of a real split, computed once per process."""
    directory = data_dir if data_dir is not None else os.environ.get(data.env_var(dataset), '')
    key = (dataset, split, os.path.realpath(directory) if directory else '', judge.sha256)
    if key not in _REFERENCES:
        real = data.load(dataset, split, data_dir)
        _REFERENCES[key] = _featurize(
            judge, real.images, f'{dataset}/{split}, {len(real.images)} images: {real.source}',
            real.labels)
    return _REFERENCES[key]


def _featurize(judge, images: np.ndarray, description: str, labels=None) -> _Reference:
    features = judge.features(images)
    return _Reference(features, images.shape[1:], *feature_stats(features), description, labels)


def main(argv=None):
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('samples', nargs='?', help='.npz file with uint8 images under `images`')
    parser.add_argument('--dataset', required=True, choices=tuple(data.DATASETS))
    parser.add_argument('--floor', action='store_true',
                        help="score the real test split instead of a samples file")
    parser.add_argument('--test-dir', help='IDX directory of the test split (with --floor)')
    parser.add_argument('--reference-split', default='train', choices=data.SPLITS)
    parser.add_argument('--data-dir', help='IDX directory of the reference split')
    parser.add_argument('--limit', type=int, help='score only the first N samples')
    parser.add_argument('--kid-subsets', type=int, default=100)
    parser.add_argument('--workdir', help='also write the scores as a run: run_info.json, '
                        'metrics.jsonl and scores.json in this directory')
    args = parser.parse_args(argv)
    if args.floor == (args.samples is not None):
        parser.error('give either a samples file or --floor, not both or neither')
    if args.floor and args.reference_split == 'test':
        parser.error('--floor scores the test split against another split; '
                     '--reference-split test would compare it with itself')
    if args.test_dir and not args.floor:
        parser.error('--test-dir only applies with --floor')
    if args.limit is not None and args.limit < 1:
        parser.error(f'--limit must be positive, got {args.limit}')

    start = time.perf_counter()
    with errors.reported():
        from research.train import compile_cache
        compile_cache.configure()  # the judge's programs, cached on disk across calls
        if args.workdir:
            from research.train import run_info  # imports jax; only for a scoring run

            run_info.write_run_info(args.workdir, step=0)
        if args.floor:
            try:
                test = data.load(args.dataset, 'test', args.test_dir)
            except data.DatasetUnavailableError as e:
                raise data.DatasetUnavailableError(
                    f'--floor scores the real test split (name its directory with --test-dir): '
                    f'{e}') from e
            images, samples = test.images, f'{args.dataset}/test: {test.source}'
            labels = test.labels
        else:
            images, samples = load_samples(args.samples), args.samples
            labels = load_labels(args.samples)
        result = score_images(images[:args.limit], args.dataset,
                              reference_split=args.reference_split, data_dir=args.data_dir,
                              kid_subsets=args.kid_subsets)
        if labels is not None:  # real images with their classes, or a conditional generator's
            result.update(conditional_scores(
                images[:args.limit], labels[:args.limit], args.dataset,
                reference_split=args.reference_split, data_dir=args.data_dir))
    result = {'samples': samples, **result, 'seconds': round(time.perf_counter() - start, 2)}
    if args.workdir:
        _write_run(args.workdir, result)
    print(json.dumps(result), flush=True)


def _write_run(workdir: str, result: dict) -> None:
    """The scores as a run's records: metrics.jsonl at step 0 and scores.json."""
    from research.train.metrics import MetricWriter
    from research.train.outputs import Outputs

    numbers = {f'scores/{key}': value for key, value in result.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    numbers.update({f'scores/fid_class_{k}': v for k, v in
                    enumerate(result.get('fid_per_class', ()))})
    writer = MetricWriter(workdir)
    writer.scalars(0, numbers, replace=True)  # a rerun in the same workdir keeps one record
    writer.close()
    Outputs(workdir).json('scores.json', result)


if __name__ == '__main__':
    main()
