"""Named zoo configurations in one place: the README's main job, the studies' tiny and paper
scales, the notebooks' tiny zoo. `train_zoo --preset=NAME` starts from one (flags given on the
command line override its knobs); `study.scale` and `study.notebook` build theirs from here.
"""

from __future__ import annotations

import dataclasses

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
