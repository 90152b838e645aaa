r"""Does XLA:CPU give the same result when one program runs on several host devices at once?

The fault behind issue 18 point 8 (docs/scale-out.md, "Same zoo on any device count"), without
nws_jax's sharding: one trainer per host device, each on a 1-device mesh and holding the same
random-architecture model, trains that model's first epoch from the same initial state, round
after round; once with the trainers running at once (one thread each), once one after another.
On a correct runtime every run gives the same bits.

  python experiments/xla_cpu_concurrency.py --devices=4 --rounds=3

Measured on this project's 2-core CPU (jax 0.10.2): see docs/scale-out.md, which also records
how far it was narrowed (the step jitted for inputs with a NamedSharding on a 1-device mesh
shows it; for inputs placed with `jax.device_put(x, device)` it does not).
"""

import concurrent.futures
import hashlib
import os
import sys

from absl import app
from absl import flags

flags.DEFINE_integer('devices', 4, 'Host (CPU) devices of the process.')
flags.DEFINE_integer('rounds', 3, 'Rounds of runs on every device, in each mode.')
flags.DEFINE_integer('model', 1, 'Which model of the zoo (its architecture is drawn at random).')
flags.DEFINE_integer('seed', 11, 'Zoo seed.')
FLAGS = flags.FLAGS


def _set_device_count():
  # XLA reads its flags when JAX starts its CPU backend: before `import jax`.
  count = next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--devices=')), '4')
  os.environ['JAX_PLATFORMS'] = 'cpu'
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + f' --xla_force_host_platform_device_count={count}').strip()


def digest(tree) -> str:
  import jax
  import numpy as np
  return hashlib.sha1(b''.join(np.asarray(x).tobytes() for x in jax.tree.leaves(tree))
                      ).hexdigest()[:12]


def main(argv):
  del argv
  import jax
  import numpy as np
  from nws_jax import sharding, space
  from nws_jax.zoo import builder as zoo_builder
  if len(jax.devices()) != FLAGS.devices:
    raise app.UsageError(f'expected {FLAGS.devices} host devices, JAX has {len(jax.devices())}')
  config = zoo_builder.ZooConfig(num_models=max(6, FLAGS.model + 1), seed=FLAGS.seed,
                                 architecture='random', max_epochs=2, min_epochs=2,
                                 num_train=600, num_test=100, eval_size=20)
  configs = space.sample_zoo(config.seed, config.num_models, config.datasets, config.architecture)
  trainers = [zoo_builder.make_trainer(config, [configs[FLAGS.model]], [FLAGS.model],
                                       mesh=sharding.model_mesh([device]))
              for device in jax.devices()]
  initial = [t.init_state() for t in trainers]
  active = np.ones(1, bool)

  def epoch(k):
    state = jax.tree.map(lambda x: x.copy(), initial[k])
    state, _ = trainers[k].run_epoch(state, 1, active)
    return digest(state)

  rows = []
  with concurrent.futures.ThreadPoolExecutor(FLAGS.devices) as pool:
    for r in range(FLAGS.rounds):
      for mode in ('at once', 'one by one'):
        if mode == 'at once':
          digests = list(pool.map(epoch, range(FLAGS.devices)))
        else:
          digests = [epoch(k) for k in range(FLAGS.devices)]
        rows += [(r, mode, k, d) for k, d in enumerate(digests)]
  reference = rows[0][3] if FLAGS.rounds else None
  print(f'jax {jax.__version__}, {FLAGS.devices} host devices, {os.cpu_count()} cores')
  for r, mode, k, d in rows:
    print(f'round {r}  {mode:10}  device {k}  {d}  {"same" if d == reference else "DIFFERS"}')
  print(f'{sum(d != reference for *_, d in rows)} of {len(rows)} runs differ from the first')


if __name__ == '__main__':
  _set_device_count()
  app.run(main)
