"""nws_jax: vectorised zoos of small CNNs and the study of their weights (the Neural Weight Space).

`nws_jax.load_zoo(workdir)` reads a zoo that `python -m nws_jax.train_zoo` built.
"""

import os as _os

__version__ = '0.1.0'

# XLA:CPU's results depend on the size of its intra-op thread pool (max(cores, devices)) where
# its own (Eigen) matmuls split work by it (outputs narrower than 8 columns above all) and in
# the reductions YNNPACK does; YNNPACK's matmuls do not (measured, docs/scale-out.md). So
# matmuls go to YNNPACK (`cnn._contract` keeps sums out of its fusions), unless the user chose
# otherwise. Read when JAX starts its CPU backend, so set on import.
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_FUSION_TYPE = 'dot'
if _YNN_FLAG not in _os.environ.get('XLA_FLAGS', ''):
  _os.environ['XLA_FLAGS'] = (_os.environ.get('XLA_FLAGS', '')
                              + f' {_YNN_FLAG}={YNN_FUSION_TYPE}').strip()


def __getattr__(name):
  # Lazy, so that `import nws_jax` stays cheap (Orbax and pandas load on first use).
  if name in ('load_zoo', 'Zoo'):
    from nws_jax import zoo
    return getattr(zoo, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
