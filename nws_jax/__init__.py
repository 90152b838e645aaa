"""nws_jax: vectorised zoos of small CNNs and the study of their weights (the Neural Weight Space).

`nws_jax.load_zoo(workdir)` reads a zoo that `python -m nws_jax.train_zoo` built.
"""

__version__ = '0.1.0'


def __getattr__(name):
  # Lazy, so that `import nws_jax` stays cheap (Orbax and pandas load on first use).
  if name in ('load_zoo', 'Zoo'):
    from nws_jax import zoo
    return getattr(zoo, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
