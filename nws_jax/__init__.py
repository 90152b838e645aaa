"""nws_jax: vectorised zoos of small CNNs and the study of their weights (the Neural Weight Space).

`nws_jax.load_zoo(workdir)` reads a zoo that `python -m nws_jax.train_zoo` built.
"""

import os as _os

__version__ = '0.1.0'

# XLA:CPU hands some reductions to YNNPACK, whose results depend on the size of its thread pool
# (max(cores, devices)): a zoo would differ between machines and device counts. Off unless the
# user chose otherwise; read when JAX starts its CPU backend, so set on import.
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
if _YNN_FLAG not in _os.environ.get('XLA_FLAGS', ''):
  _os.environ['XLA_FLAGS'] = (_os.environ.get('XLA_FLAGS', '') + f' {_YNN_FLAG}=').strip()


def __getattr__(name):
  # Lazy, so that `import nws_jax` stays cheap (Orbax and pandas load on first use).
  if name in ('load_zoo', 'Zoo'):
    from nws_jax import zoo
    return getattr(zoo, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
