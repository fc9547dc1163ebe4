"""How well a classifier does on a whole test split: accuracy, per-class precision, recall and F1,
the confusion matrix, and a picture of it.

Predictions come from `DatasetEvaluator` (every example exactly once, the padded last batch
dropped); the counting is plain numpy on the host, so every number here is exact over the split:
  precision_c = TP_c / (TP_c + FP_c)   of the images predicted c, the fraction that are c;
  recall_c    = TP_c / (TP_c + FN_c)   of the images of class c, the fraction predicted c;
  F1_c        = 2 P R / (P + R);       macro F1 is the unweighted mean over classes.
A class never predicted has precision 0 (and F1 0), not NaN: sklearn's `zero_division=0`, so a
collapsed classifier shows up as a low macro F1 rather than as a missing number.
"""
import io

import jax
import numpy as np

from research import data
from research.evals.evaluator import DatasetEvaluator
from research.objectives.classifier import make_predict_fn


def make_classifier_evaluator(model, batch_size: int, mesh=None):
    """predict(params, uint8 images) -> int64 (N,) predicted classes over all of `images`."""
    evaluator = DatasetEvaluator(make_predict_fn(model), batch_size, mesh)
    key = jax.random.PRNGKey(0)  # unused by the prediction; DatasetEvaluator passes one

    def predict(params, images: np.ndarray) -> np.ndarray:
        return evaluator(params, images, key).astype(np.int64)

    return predict


def accuracy_hook(predict, test, name: str):
    """A loop hook: {'NAME/accuracy': accuracy of predict(params, images) on the whole `test`
    split (a data.Split)}, for a state with `params`."""
    def hook(step, state, out):
        return {f'{name}/accuracy': float(np.mean(predict(state.params, test.images)
                                                   == test.labels))}
    return hook


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """int64 (num_classes, num_classes): row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f'labels and predictions must be (N,) arrays of one shape, got '
                         f'{labels.shape} and {predictions.shape}')
    for what, values in (('labels', labels), ('predictions', predictions)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f'{what} must lie in 0..{num_classes - 1}, found '
                             f'{values.min()}..{values.max()}')
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _ratio(numerator, denominator):
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)),
                     where=denominator > 0)


def classification_metrics(labels, predictions, num_classes: int) -> dict:
    """{'accuracy', 'macro_f1', 'precision', 'recall', 'f1', 'support', 'confusion'}: the first
    two floats, the per-class ones float (num_classes,) arrays, `confusion` from
    `confusion_matrix`."""
    matrix = confusion_matrix(labels, predictions, num_classes)
    if matrix.sum() == 0:
        raise ValueError('cannot score an empty set of predictions')
    hits = np.diag(matrix).astype(np.float64)
    precision = _ratio(hits, matrix.sum(axis=0))
    recall = _ratio(hits, matrix.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {'accuracy': float(hits.sum() / matrix.sum()), 'macro_f1': float(f1.mean()),
            'precision': precision, 'recall': recall, 'f1': f1,
            'support': matrix.sum(axis=1), 'confusion': matrix}


def metrics_as_json(metrics: dict, class_names) -> dict:
    """The metrics with the per-class numbers keyed by class name, ready for json.dump."""
    per_class = {name: {'precision': float(metrics['precision'][c]),
                        'recall': float(metrics['recall'][c]), 'f1': float(metrics['f1'][c]),
                        'support': int(metrics['support'][c])}
                 for c, name in enumerate(class_names)}
    return {'accuracy': metrics['accuracy'], 'macro_f1': metrics['macro_f1'],
            'per_class': per_class, 'class_names': list(class_names),
            'confusion': metrics['confusion'].tolist()}


def confusion_png(matrix: np.ndarray, class_names, title: str = '') -> bytes:
    """The confusion matrix as PNG bytes: rows true, columns predicted, each cell its count,
    shaded by the fraction of its row so that classes of different sizes read alike."""
    import matplotlib  # only when a picture is asked for: slow to import
    matplotlib.use('Agg')  # no display on a server; must precede pyplot
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f'matrix must be {n} x {n} for {n} class names, got {matrix.shape}')
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n), dpi=100)
    try:
        ax.imshow(matrix / rows, cmap='Blues', vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha='center', va='center', fontsize=7,
                    color='white' if matrix[i, j] > 0.5 * rows[i, 0] else 'black')
        ax.set_xticks(range(n), class_names, rotation=45, ha='right', fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        ax.set_xlabel('predicted')
        ax.set_ylabel('true')
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format='png')
        return buffer.getvalue()
    finally:
        plt.close(fig)


def write_report(out, train, test, predictions, class_names, *, name: str, step: int,
                 title: str, extra: dict | None = None) -> dict:
    """The end of a classifier run: prints the final line, writes classification.json (every
    metric, where the data came from, `extra`) and confusion.png through `out`
    (research.train.outputs.Outputs); returns the metrics."""
    scores = classification_metrics(test.labels, predictions, len(class_names))
    report = {**metrics_as_json(scores, class_names), 'step': step,
              **data.describe(train, test, name), **(extra or {})}
    out.print(f'final ({name}, {len(test.labels)} examples, step {step}): accuracy '
              f'{scores["accuracy"]:.4f}, macro F1 {scores["macro_f1"]:.4f}')
    if out.enabled:  # drawing the picture takes matplotlib a second: only where it is written
        out.bytes('confusion.png', confusion_png(
            scores['confusion'], class_names, title=f'{title}: accuracy {scores["accuracy"]:.4f}'))
    out.json('classification.json', report)
    return scores
