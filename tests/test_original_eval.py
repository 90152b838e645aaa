"""A zoo under bn_eval='original' and the 'original' stopping reading against a plain
single-model loop written here from the original code's description (classifier.py).

The reference follows the original loop, one global step i at a time: evaluate the step's batch
with the training graph (batch statistics, no dropout, augmented if the net augments; the pass
updates the moving averages) and add it to the training accuracy; at an epoch boundary, evaluate
whole batches of the validation set and then of the test set the same way, export, and judge
early stopping; then train on the batch. It uses this project's data order and keys (the
original drew them from Python's `random`), its init, optimizer and network functions.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nws_jax import augment
from nws_jax import cnn
from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import optim
from nws_jax import snapshots
from nws_jax import space
from nws_jax.zoo import builder as zoo_builder
from nws_jax.zoo import loop
from nws_jax.zoo import step
from nws_jax.zoo import trainer as trainer_lib

NAMES = ('gratings', 'shapes')
BASE = space.ModelConfig(dataset='gratings', lrate=0.0005, batch_size=32, batch_norm=True,
                         augmentation=True, optimizer=2, activation=3, initialization=3,
                         filter_size=5, depth_conv=3, depth_fc=2, width_conv=8, width_fc=128)
# Momentum SGD at small learning rates: Adam's and RMSProp's sign-like steps turn the rounding
# differences of a batched and an unbatched program into different weights within a few epochs
# (measured: 0.45 apart after 4 epochs for RMSProp at 0.001), which would blur the comparison.
# One augmented, both of one batch size so that they share a vmapped program.
CONFIGS = [BASE, dataclasses.replace(BASE, dataset='shapes', augmentation=False, activation=0,
                                     initialization=2, lrate=0.0002)]
MODEL_IDS = [4, 9]
MAX_EPOCHS, MIN_EXPORTS = 3, 2


def reference_run(hp, config, data, arch, rules):
  """The original loop for one model: (curves [exports, 3], vectors [exports, n], exports)."""
  bs = config.batch_size
  spe = int(hp.steps_per_epoch)
  params, stats = step.init_model(hp, arch)[:2]
  opt = optim.init(params)
  d = int(hp.dataset)

  @jax.jit
  def graph_eval(params, stats, images, labels, key):
    x = augment.maybe_augment(key, images.astype(jnp.float32) / 255.0, hp.augmentation)
    logits, stats = cnn.apply(params, stats, x, hp.activation, arch=arch, train=True,
                              dropout=False)
    return (jnp.argmax(logits, -1) == labels), stats

  @jax.jit
  def train(params, stats, opt, images, labels, key):
    aug_key, dropout_key = jax.random.split(key)
    x = augment.maybe_augment(aug_key, images.astype(jnp.float32) / 255.0, hp.augmentation)

    def loss_fn(p):
      logits, new_stats = cnn.apply(p, stats, x, hp.activation, arch=arch, train=True,
                                    dropout_key=dropout_key)
      return cnn.cross_entropy(logits, labels), new_stats

    (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params, opt = optim.update(grads, opt, params, hp.optimizer, hp.lrate)
    return params, new_stats, opt

  curves, vectors = [], []
  train_hits, train_seen = 0, 0
  es = es_same = es_below = 0
  current = smooth = None
  for epoch in range(1, MAX_EPOCHS + 2):
    order = np.asarray(step.epoch_order(hp, jnp.int32(epoch), data))
    for s in range(spe):
      rows = order[s * bs:(s + 1) * bs]
      images, labels = data.train_images[d, rows], data.train_labels[d, rows]
      key = step.step_key(hp, jnp.int32(epoch), jnp.int32(s))
      hits, stats = graph_eval(params, stats, images, labels, jax.random.fold_in(key, 2))
      train_hits, train_seen = train_hits + int(hits.sum()), train_seen + bs
      if s == 0:  # the export after epoch - 1 epochs
        ii = epoch
        accs = [train_hits / train_seen]
        train_hits = train_seen = 0
        export_key = jax.random.fold_in(jax.random.fold_in(hp.key, 3), epoch - 1)
        for eval_set in (1, 2):
          labels_all = np.asarray(data.eval_labels[eval_set, d])
          n = int((labels_all >= 0).sum())
          correct = counted = 0
          for j in range(max(1, n // bs)):
            index = j * bs + np.arange(bs)
            rows_e = index % n
            hits, stats = graph_eval(params, stats, data.eval_images[eval_set, d, rows_e],
                                     labels_all[rows_e],
                                     jax.random.fold_in(jax.random.fold_in(export_key, eval_set),
                                                        j))
            use = index < n
            correct, counted = correct + int(np.asarray(hits)[use].sum()), counted + use.sum()
          accs.append(correct / counted)
        curves.append(accs)
        vectors.append(np.asarray(cnn.flatten(params, stats, arch)))
        acc = accs[1]
        if ii > 1 and acc < current:
          es, es_same = es + 1, 0
        elif ii > 1 and abs(acc - current) < 1e-8:
          es_same += 1
        else:
          es = es_same = 0
        current = acc
        smooth = acc if ii == 1 else 0.5 * smooth + 0.5 * acc
        if ii > 1 and current < smooth:
          es_below += 1
        stop = (es >= rules.patience_fall or es_below >= rules.patience_below
                or es_same >= rules.patience_same) and ii >= rules.min_epochs
        if stop or ii - 1 >= rules.max_epochs:
          return np.array(curves), np.array(vectors), ii
      params, stats, opt = train(params, stats, opt, images, labels, key)
  raise AssertionError('the reference never stopped')


@pytest.fixture(scope='module')
def zoo_and_references(tiny_datasets):
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  # One fall is enough to stop (the study waits for 5), so that a 3-epoch run exercises a stop.
  rules = early_stopping.StoppingRules(min_epochs=MIN_EXPORTS, max_epochs=MAX_EPOCHS,
                                       patience_fall=1)
  cfg = trainer_lib.TrainConfig(seed=2, rules=rules)
  assert cfg.bn_eval == 'original' and rules.reading == 'original'  # the defaults
  trainer = trainer_lib.ZooTrainer(CONFIGS, MODEL_IDS, data, NAMES, sizes, cfg)
  exported = {}
  result = loop.train(trainer, on_export=lambda n, w: exported.update(
      {n: [np.asarray(a) for a in w]}))
  (group,) = trainer.groups
  refs = []
  for j, pos in enumerate(group.members):
    hp = jax.tree.map(lambda x, j=j: x[j], group.hyper)
    refs.append(reference_run(hp, CONFIGS[pos], data, group.arch, rules))
  return trainer, result, exported, refs


def _zoo_vectors(trainer, result, exported, pos):
  return np.array([exported[step][array][row, :trainer.lengths[pos]]
                   for step, array, row in result.exports[pos, :result.stopping.epochs[pos] + 1]])


def test_curves_and_stopping_equal_the_reference(zoo_and_references):
  trainer, result, _, refs = zoo_and_references
  # One net stopped early and one ran to the cap: both paths are compared.
  assert sorted(result.stopping.status) == [early_stopping.EARLY_STOPPED,
                                            early_stopping.EPOCH_CAP]
  for pos, (curves, _, stop_export) in enumerate(refs):
    epochs = int(result.stopping.epochs[pos])
    assert epochs + 1 == stop_export
    zoo_curves = result.curves[pos, :epochs + 1]
    # Batched and unbatched programs round differently; a prediction on the edge may flip.
    np.testing.assert_allclose(zoo_curves, curves, atol=1.5 / 30, rtol=0)
    assert np.mean(np.isclose(zoo_curves, curves, rtol=0, atol=1e-6)) >= 0.8


def test_snapshots_and_failed_flag_follow_the_reference(zoo_and_references):
  trainer, result, exported, refs = zoo_and_references
  table = zoo_builder.model_table(trainer, result)
  for pos, (curves, _, stop_export) in enumerate(refs):
    np.testing.assert_array_equal(snapshots.select_exports(int(result.stopping.epochs[pos]) + 1),
                                  snapshots.select_exports(stop_export))
    assert bool(table.failed[pos]) == bool(curves[-1, 2] < zoo_builder.FAILED_BELOW)


def test_every_export_holds_the_moving_statistics_of_the_passes_before_it(zoo_and_references):
  trainer, result, exported, refs = zoo_and_references
  arch = trainer.groups[0].arch
  for pos, (_, vectors, _) in enumerate(refs):
    zoo = _zoo_vectors(trainer, result, exported, pos)
    assert zoo.shape == vectors.shape
    for e in range(len(zoo)):
      _, stats = cnn.unflatten(zoo[e], arch)
      _, ref_stats = cnn.unflatten(vectors[e], arch)
      for name in stats:
        for key in ('mean', 'var'):
          a, b = np.asarray(stats[name][key]), np.asarray(ref_stats[name][key])
          np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(b).max(),
                                     err_msg=f'export {e + 1} {name} {key}')
      np.testing.assert_allclose(zoo[e], vectors[e], rtol=0,
                                 atol=2e-3 * np.abs(vectors[e]).max())
    # Export 1 (the initialisation) already holds data statistics, not 0 and 1.
    _, first = cnn.unflatten(zoo[0], arch)
    assert np.abs(np.asarray(first['conv_00']['mean'])).max() > 1e-3
    assert np.abs(np.asarray(first['conv_00']['var']) - 1).max() > 1e-3


def test_moving_reading_leaves_the_initial_statistics_and_differs(tiny_datasets,
                                                                  zoo_and_references):
  trainer, result, exported, _ = zoo_and_references
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  cfg = dataclasses.replace(trainer.cfg, bn_eval='moving')
  moving = trainer_lib.ZooTrainer(CONFIGS, MODEL_IDS, data, NAMES, sizes, cfg)
  state = moving.init_state()
  acc, same = moving.evaluate(state)
  assert same is state
  (vector,) = moving.export(state)
  _, stats = cnn.unflatten(np.asarray(vector)[0, :moving.lengths[0]], moving.groups[0].arch)
  np.testing.assert_array_equal(np.asarray(stats['conv_00']['mean']), 0)
  np.testing.assert_array_equal(np.asarray(stats['conv_00']['var']), 1)
  # The same initial weights, other statistics in the original reading's export 1.
  first = _zoo_vectors(trainer, result, exported, 0)[0]
  assert not np.array_equal(first, np.asarray(vector)[0, :moving.lengths[0]])
