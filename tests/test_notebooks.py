"""The notebooks in experiments/notebooks run top to bottom headless and draw their figures; the
functions they call (nws_jax.study.notebook) checked on the synthetic zoo.

The zoo notebook runs with NWS_ZOO unset, so its kernel builds the tiny zoo (the one zoo this
module trains); the meta notebook then runs with NWS_ZOO pointing at that zoo and NWS_META unset,
so its kernel trains the tiny meta-classifier run. Kernels inherit the test's environment.
"""

import glob
import os

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from nws_jax import snapshots as snapshots_lib
from nws_jax import zoo as zoo_lib
from nws_jax.meta import pipeline
from nws_jax.study import notebook

NOTEBOOKS = os.path.join(os.path.dirname(__file__), os.pardir, 'experiments', 'notebooks')
FIGURE_CALLS = ('accuracy_by_property', 'training_curves', 'projection', 'meta_figure')


def _execute(name, folder):
  """Runs experiments/notebooks/<name>.ipynb in a fresh python3 kernel started in `folder`;
  returns the executed notebook (nbclient raises CellExecutionError on a failing cell)."""
  import nbclient
  import nbformat
  nb = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(folder)}}).execute()
  return nb


def _code_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == 'code']


def _images(nb) -> int:
  return sum('image/png' in out.get('data', {}) for cell in _code_cells(nb)
             for out in cell.outputs)


def _figure_cells(nb) -> int:
  return sum(any(call in cell.source for call in FIGURE_CALLS) for cell in _code_cells(nb))


def _text(nb) -> str:
  """Every printed stream and plain-text result of the notebook, joined."""
  parts = []
  for cell in _code_cells(nb):
    for out in cell.outputs:
      parts.append(out.get('text', '') + out.get('data', {}).get('text/plain', ''))
  return '\n'.join(parts)


@pytest.fixture(scope='module')
def zoo_notebook(tmp_path_factory):
  """(executed zoo notebook, the tiny zoo its kernel built): NWS_ZOO unset, TMPDIR a fresh
  folder so the kernel's temporary folders land in it."""
  kernel_tmp = tmp_path_factory.mktemp('zoo_kernel_tmp')
  with pytest.MonkeyPatch.context() as mp:
    mp.delenv(notebook.ZOO_VARIABLE, raising=False)
    mp.delenv(notebook.META_VARIABLE, raising=False)
    mp.setenv('TMPDIR', str(kernel_tmp))
    nb = _execute('zoo', kernel_tmp)
  zoos = glob.glob(os.path.join(kernel_tmp, 'nws_tiny_zoo_*'))
  assert len(zoos) == 1, zoos
  return nb, zoos[0]


def test_zoo_notebook_builds_a_tiny_zoo_and_draws_its_figures(zoo_notebook):
  nb, zoo_dir = zoo_notebook
  assert os.path.isfile(os.path.join(zoo_dir, zoo_lib.MODELS_FILE))
  text = _text(nb)
  assert f'built a tiny zoo in {zoo_dir}' in text
  assert '8 models; weights per model' in text
  assert _figure_cells(nb) >= 4
  assert _images(nb) >= _figure_cells(nb)


def test_meta_notebook_trains_a_tiny_run_on_the_zoo_of_nws_zoo(zoo_notebook, monkeypatch,
                                                               tmp_path):
  _, zoo_dir = zoo_notebook
  monkeypatch.setenv(notebook.ZOO_VARIABLE, zoo_dir)
  monkeypatch.delenv(notebook.META_VARIABLE, raising=False)
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  nb = _execute('meta_classifiers', tmp_path)
  text = _text(nb)
  assert f'zoo: {zoo_dir} (from NWS_ZOO)' in text
  assert 'trained a tiny meta-classifier run in' in text
  assert 'chance' in text and 'gbt_layers' in text  # the per-property table
  assert _figure_cells(nb) >= 6
  assert _images(nb) >= _figure_cells(nb)
  runs = glob.glob(os.path.join(tmp_path, 'nws_tiny_meta_*', 'meta', 'accuracy.csv'))
  assert len(runs) == 1


def test_notebooks_are_stored_without_outputs():
  import nbformat
  for name in ('zoo', 'meta_classifiers'):
    nb = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
    nbformat.validate(nb)
    assert _code_cells(nb)[0].source.startswith('%matplotlib inline')
    assert all(not cell.outputs and cell.execution_count is None for cell in _code_cells(nb))


# ------------------------------------------------------------------------------------------------
# The functions, on the synthetic zoo (40 models; dataset, lrate, augmentation, optimizer and
# initialization vary)


def test_a_variable_that_names_no_finished_run_is_refused(monkeypatch, tmp_path):
  monkeypatch.setenv(notebook.ZOO_VARIABLE, str(tmp_path))
  with pytest.raises(ValueError, match='NWS_ZOO=.* is not a finished zoo'):
    notebook.zoo_path()
  monkeypatch.setenv(notebook.META_VARIABLE, str(tmp_path))
  with pytest.raises(ValueError, match='NWS_META=.* is not a finished meta-classifier run'):
    notebook.meta_path(str(tmp_path))


def test_nws_zoo_names_the_zoo(monkeypatch, synthetic_zoo_dir):
  monkeypatch.setenv(notebook.ZOO_VARIABLE, synthetic_zoo_dir)
  assert notebook.zoo_path() == synthetic_zoo_dir


def test_zoo_summary_counts_models_per_dataset(synthetic_zoo_dir):
  table = notebook.load_zoo(synthetic_zoo_dir).table
  summary = notebook.zoo_summary(table)
  assert list(summary.index) == ['digits', 'shapes', 'all']
  assert summary.loc['all', 'models'] == 40
  assert summary['models'].iloc[:-1].sum() == 40
  assert summary.loc['all', 'mean test_accuracy'] == pytest.approx(0.5)


def test_accuracy_by_property_draws_a_panel_per_varying_property(synthetic_zoo_dir):
  table = notebook.load_zoo(synthetic_zoo_dir).table
  fig = notebook.accuracy_by_property(table)
  assert isinstance(fig, matplotlib.figure.Figure)
  titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
  assert titles == ['dataset', 'lrate', 'augmentation', 'optimizer', 'initialization']
  lrate = next(ax for ax in fig.axes if ax.get_title() == 'lrate')
  assert len(lrate.get_xticklabels()) == notebook.LRATE_BINS
  optimizer = next(ax for ax in fig.axes if ax.get_title() == 'optimizer')
  assert [t.get_text() for t in optimizer.get_xticklabels()] == ['adam', 'rmsprop', 'momentum']


def test_property_labels_bin_lrate_into_ranges_of_equal_counts():
  table = pd.DataFrame({'lrate': np.linspace(1e-4, 5e-3, 40)})
  labels = notebook.property_labels(table, 'lrate')
  assert labels.nunique() == notebook.LRATE_BINS
  assert (labels.value_counts() == 10).all()


def test_training_curves_draw_a_line_per_model_and_a_mean_per_value(synthetic_zoo_dir):
  zoo = notebook.load_zoo(synthetic_zoo_dir)
  fig = notebook.training_curves(zoo.curves, zoo.table, 'optimizer')
  ax, = fig.axes
  thick = [line for line in ax.get_lines() if line.get_linewidth() > 2]
  assert len(ax.get_lines()) == 40 + 3 + 1  # models, means per optimizer, chance
  assert len(thick) == 3
  assert thick[0].get_ydata()[0] == pytest.approx(0.1)  # the synthetic curve starts at 0.1


def test_pca_2d_finds_the_spread_direction():
  rng = np.random.default_rng(0)
  x = np.outer(rng.normal(size=30), [3.0, 4.0, 0.0]) + 1e-3 * rng.normal(size=(30, 3))
  coords, fraction = notebook.pca_2d(x)
  assert coords.shape == (30, 2)
  assert fraction[0] > 0.999 and fraction.sum() <= 1.0
  along = (x - x.mean(0)) @ np.array([0.6, 0.8, 0.0])  # the unit spread direction
  np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(along), atol=1e-2)


def test_projection_labels_axes_with_explained_variance(synthetic_zoo_dir):
  zoo = notebook.load_zoo(synthetic_zoo_dir)
  fig = notebook.projection(zoo, 'initialization')
  ax, = fig.axes
  assert 'of the variance' in ax.get_xlabel() and 'of the variance' in ax.get_ylabel()
  assert len(ax.collections) == 4  # one scatter per initialization
  fig = notebook.projection_grid(zoo, ['dataset', 'lrate'], snapshot=0)
  assert 'snapshot 1 of 20' in fig.get_suptitle()
  assert len([ax for ax in fig.axes if ax.get_label() != '<colorbar>']) == 2


def test_projection_of_a_mixed_zoo_uses_vector_statistics(synthetic_zoo_dir):
  zoo = notebook.load_zoo(synthetic_zoo_dir)
  lengths = np.where(np.arange(zoo.num_models) % 2, 150, 200)
  flat = np.concatenate([zoo.snapshots[i][:, :n].reshape(-1) for i, n in enumerate(lengths)])
  mixed = zoo_lib.Zoo(zoo.workdir, snapshots_lib.Snapshots(flat, lengths), zoo.export_numbers,
                      zoo.table, zoo.curves, zoo.config)
  feats, what = notebook.weight_features(mixed)
  assert feats.shape == (40, 14) and what == 'weight statistics'
  assert 'weight statistics' in notebook.projection(mixed, 'optimizer').get_suptitle()


def test_meta_table_and_figure_from_results():
  accuracy = pd.DataFrame([dict(property='optimizer', metric='accuracy', value=0.6, chance=0.4,
                                n_test_models=5),
                           dict(property='lrate', metric='mae', value=1e-3, chance=2e-3,
                                n_test_models=5)])
  baseline = pd.DataFrame([dict(property=p, method='gbt_slice', metric=m, value=v, chance=c,
                                n_test_models=5)
                           for p, m, v, c in (('optimizer', 'accuracy', 0.5, 0.4),
                                              ('lrate', 'mae', 1.5e-3, 2e-3))])
  results = pipeline.Results(accuracy, None, None, None, None, baseline, None)
  table = notebook.meta_table(results)
  assert list(table.columns) == ['metric', 'meta', 'chance', 'gbt_slice', 'test models']
  assert table.loc['lrate', 'gbt_slice'] == pytest.approx(1.5e-3)
  image = notebook.meta_figure('accuracy', results, path='unused')
  assert image.data.startswith(b'\x89PNG')
  with pytest.raises(ValueError, match='unknown figure'):
    notebook.meta_figure('nonsense', results, path='unused')
