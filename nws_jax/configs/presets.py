"""Named configurations in one place: the README's main job, the studies' tiny and paper
scales, the notebooks' tiny runs. `train_zoo --preset=NAME` starts from a zoo preset (flags given
on the command line override its knobs); the experiments' --scale is a `Scale` of `SCALES`; the
notebooks build their tiny runs from `NOTEBOOK` and `NOTEBOOK_META`.
"""

from __future__ import annotations

import dataclasses

from nws_jax.configs.meta import EvalOptions, MetaConfig
from nws_jax.configs.study import WHOLE, Scale
from nws_jax.configs.zoo import ZooConfig

# The README's main job on the offline datasets: 64 nets, 5 epochs on 600 examples per dataset.
MAIN = ZooConfig(num_models=64, num_train=600, max_epochs=5, eval_size=100)
# The studies' tiny scale (this CPU in minutes): 5 epochs on the offline datasets.
TINY = ZooConfig(num_models=32, seed=0, max_epochs=5, min_epochs=5, num_train=600, num_test=200,
                 eval_size=100)
TINY_MIXED = dataclasses.replace(TINY, num_models=16, architecture='random')
# PROTOCOL's sizes: 3,000 fixed and 13,000 mixed nets on the five datasets, up to 1,000 epochs
# with early stopping from epoch 20, whole datasets and evaluation sets.
PAPER = ZooConfig(num_models=3000, seed=0, datasets=('mnist', 'cifar10', 'svhn', 'stl10',
                                                     'fashion'),
                  max_epochs=1000, min_epochs=20, num_train=None, eval_size=None)
PAPER_MIXED = dataclasses.replace(PAPER, num_models=13000, architecture='random', packing='conv')
# The notebooks' tiny zoo: 8 models of 3 epochs. Seed 193260's 8 models all draw batch size 128
# (one training program instead of the usual four: compiling is most of a tiny zoo's time) while
# dataset (all three), lrate, augmentation, optimizer, activation and initialisation vary.
NOTEBOOK = ZooConfig(num_models=8, seed=193260, max_epochs=3, min_epochs=1, num_train=300,
                     num_test=100, eval_size=100)

ZOO = {'main': MAIN, 'tiny': TINY, 'tiny_mixed': TINY_MIXED, 'paper': PAPER,
       'paper_mixed': PAPER_MIXED, 'notebook': NOTEBOOK}

# The README's main job's meta-classifier (train_meta's flags there): 500-weight slices, a narrow
# network, 40 epochs, failed nets kept (most nets of a 5-epoch zoo are flagged failed).
MAIN_META = (MetaConfig(slice_length=500, conv_widths=(8, 16, 32, 32, 32, 32),
                        dense_widths=(256, 64), epochs=40, include_failed=True),
             EvalOptions(positions=50, ensemble_slices=10))
# The notebooks' tiny meta-classifier run: 200-weight slices of all 20 snapshots, 3 epochs, a
# small network, failed models kept (a 3-epoch zoo's are mostly failed); few slices per
# evaluation.
NOTEBOOK_META = (MetaConfig(slice_length=200, epochs=3, conv_widths=(8, 16, 16, 16),
                            dense_widths=(64,), first_snapshot=1, last_snapshot=20,
                            include_failed=True),
                 EvalOptions(ensemble_slices=4, positions=10, snapshot_slices=2, baseline=True,
                             baseline_slices=2))
META = {'main': MAIN_META, 'notebook': NOTEBOOK_META}

_RANGES = (('early', (1, 5)), ('late', (16, 20)), ('all', (1, 20)))
# The studies' tiny scale, this CPU in minutes: zoos of 5 epochs on the offline datasets (most
# models stay near chance, as in the README's main job) and a narrow meta-classifier on
# 500-weight slices.
TINY_SCALE = Scale(
    name='tiny',
    fixed_zoo=TINY,
    # Random architectures compile one program per (padded architecture, batch size): 16 models
    # keep that to minutes on this CPU.
    mixed_zoo=TINY_MIXED,
    # include_failed: most models of a 5-epoch zoo stay near chance and are flagged failed (22
    # of 32, 15 of 16); left out, too few would remain to split.
    meta=MetaConfig(slice_length=500, epochs=20, conv_widths=(8, 16, 32, 32, 32, 32),
                    dense_widths=(256, 64), include_failed=True),
    options=EvalOptions(ensemble_slices=10, positions=25, snapshot_slices=4, baseline_slices=4),
    ranges=_RANGES,
    slice_lengths=(100, 300, 1000, 3000),
    vote_sizes=(1, 2, 5, 10, 20),
)
# PROTOCOL's sizes: 3,000 fixed and 13,000 mixed nets on the five datasets, up to 1,000 epochs
# with early stopping from epoch 20; meta-classifiers on 5,000-weight slices, 50 epochs.
PAPER_SCALE = Scale(
    name='paper',
    fixed_zoo=PAPER,
    mixed_zoo=PAPER_MIXED,
    meta=MetaConfig(),
    options=EvalOptions(),
    ranges=_RANGES,
    slice_lengths=(250, 500, 1000, 2500, 5000, 10000, 20000, 40000, WHOLE),
    vote_sizes=(1, 2, 5, 10, 20, 50, 100),
)
SCALES = {s.name: s for s in (TINY_SCALE, PAPER_SCALE)}
