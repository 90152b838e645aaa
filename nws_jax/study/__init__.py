"""The reference study's experiments (PROTOCOL §6), from a laptop-sized run to paper scale.

The two scales (`tiny`, `paper`) are presets (nws_jax/configs/presets.py `SCALES`, a
`configs.study.Scale` each); runner.py holds a study's workdir (its zoos and
meta-classifier runs, reused on --resume), studies.py the five studies (per-property table,
when, where, slice length, ensembles), figures.py their extra figures and report.py the markdown
summary. The absl entry points are in experiments/.
"""
