"""Meta-classifiers: read slices of a zoo's weight snapshots and recover how each model trained.

slices.py    which (model, snapshot) pairs feed a run and the random slices drawn from them
targets.py   the properties to recover: classes or regression targets, chance levels
split.py     the seeded split of models into meta-train, validation and meta-test
model.py     the 1D CNN of PROTOCOL §5 (Flax)
train.py     all chosen properties trained at once, one meta-classifier per property vmapped
evaluate.py  how much / where / when: accuracy tables, ensembles, position, snapshot, part
baseline.py  slice and layer statistics fed to gradient-boosted trees (scikit-learn)
plots.py     the PNG figures of the evaluations
"""
