"""The CNN family (PROTOCOL §2) and its snapshot layout (PROTOCOL §4)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nws_jax import cnn


def init(key, arch, initialization):
  """cnn.init, jitted: eager op-by-op dispatch of the four candidate kernels is slow."""
  return jax.jit(cnn.init, static_argnums=1)(key, arch, jnp.int32(initialization))


def apply(params, stats, images, activation, *, arch, train, dropout_key=None):
  fn = jax.jit(cnn.apply, static_argnames=('arch', 'train', 'conv_impl'))
  return fn(params, stats, images, jnp.int32(activation), arch=arch, train=train,
            dropout_key=dropout_key)


def expected_counts(k, depth_conv, depth_fc, width_conv, width_fc):
  """Weight counts written from PROTOCOL §2/§4 alone (not from cnn.layer_specs)."""
  per_block = {3: [1, 1, 1], 4: [1, 1, 2], 5: [1, 2, 2]}[depth_conv]
  n_conv, cin = 0, 3
  for block, layers in enumerate(per_block):
    cout = width_conv * 2**block
    for _ in range(layers):
      n_conv += k * k * cin * cout + cout + 4 * cout  # kernel, bias, beta/gamma/mean/var
      cin = cout
  fin = 4 * 4 * cin  # 32 -> 16 -> 8 -> 4 after three poolings
  n_fc = 0
  for i in range(depth_fc):
    units = width_fc // 2**i
    n_fc += fin * units + units + 4 * units
    fin = units
  n_fc += fin * 20 + 20
  return n_conv, n_fc


def test_fixed_architecture_has_the_nws_fixed_weight_count():
  assert cnn.weight_counts(cnn.Architecture()) == (16880, 75988)


# Every architecture of PROTOCOL §1 (3^5 = 243).
ARCHS = [cnn.Architecture(*a) for a in itertools.product((3, 5, 7), (3, 4, 5), (2, 3, 4),
                                                          (4, 8, 12), (64, 128, 192))]


@pytest.mark.parametrize('arch', ARCHS, ids=str)
def test_every_architecture_option_counts_weights_as_the_protocol(arch):
  assert cnn.weight_counts(arch) == expected_counts(arch.filter_size, arch.depth_conv,
                                                    arch.depth_fc, arch.width_conv, arch.width_fc)


@pytest.mark.parametrize('arch', [cnn.Architecture(3, 5, 4, 12, 192), cnn.Architecture(7, 4, 3, 4, 64),
                                  cnn.Architecture()], ids=str)
def test_init_apply_and_flatten_agree_with_the_count(arch):
  # Shapes only (eval_shape traces without compiling), which is what the count is about.
  params, stats = jax.eval_shape(lambda k: cnn.init(k, arch, jnp.int32(2)), jax.random.PRNGKey(0))
  logits, new_stats = jax.eval_shape(
      lambda p, s: cnn.apply(p, s, jnp.zeros((2, 32, 32, 3)), jnp.int32(0), arch=arch,
                             train=True, dropout_key=jax.random.PRNGKey(1)), params, stats)
  assert logits.shape == (2, 20)
  assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
  leaves = sum(x.size for x in jax.tree.leaves((params, stats)))
  assert leaves == sum(expected_counts(arch.filter_size, arch.depth_conv, arch.depth_fc,
                                       arch.width_conv, arch.width_fc))
  flat = jax.eval_shape(lambda p, s: cnn.flatten(p, s, arch), params, stats)
  assert flat.shape == (leaves,)
  convs = [s for s in cnn.layer_specs(arch) if s.kind == 'conv']
  assert [s.kernel_shape[0] for s in convs] == [arch.filter_size] * arch.depth_conv


@pytest.mark.parametrize('arch', [cnn.Architecture(3, 3, 2, 4, 64), cnn.Architecture(5, 4, 4, 4, 64),
                                  cnn.Architecture(7, 5, 3, 4, 128)], ids=str)
def test_flatten_follows_the_release_order_on_a_hand_built_model(arch):
  params, stats = jax.eval_shape(lambda k: cnn.init(k, arch, jnp.int32(2)), jax.random.PRNGKey(0))
  counter = itertools.count()

  def numbered(x):
    start = next(counter) * 100000
    return np.arange(start, start + x.size, dtype=np.float32).reshape(x.shape)

  params = jax.tree.map(numbered, params)
  stats = jax.tree.map(numbered, stats)
  expected = []
  for name in sorted(params):  # conv_00 < conv_01 < … < dense_00 < … < logits
    layer = params[name]
    kernel = np.asarray(layer['kernel'])
    if kernel.ndim == 4:
      k, _, cin, cout = kernel.shape
      for o in range(cout):
        for i in range(cin):
          for r in range(k):
            for c in range(k):
              expected.append(kernel[r, c, i, o])
    else:
      fin, units = kernel.shape
      for u in range(units):
        for i in range(fin):
          expected.append(kernel[i, u])
    expected += list(np.asarray(layer['bias']))
    if 'beta' in layer:
      expected += list(np.asarray(layer['beta'])) + list(np.asarray(layer['gamma']))
      expected += list(np.asarray(stats[name]['mean'])) + list(np.asarray(stats[name]['var']))
  flat = np.asarray(jax.jit(cnn.flatten, static_argnums=2)(params, stats, arch))
  np.testing.assert_array_equal(flat, np.array(expected, np.float32))
  n_conv, _ = cnn.weight_counts(arch)
  last_conv = f'conv_{arch.depth_conv - 1:02d}'
  assert flat[n_conv - 1] == np.asarray(stats[last_conv]['var'])[-1]  # conv part ends there


def test_unflatten_inverts_flatten():
  arch = cnn.Architecture()
  params, stats = init(jax.random.PRNGKey(3), arch, jnp.int32(3))
  p2, s2 = cnn.unflatten(cnn.flatten(params, stats, arch), arch)
  jax.tree.map(np.testing.assert_array_equal, (params, stats), (p2, s2))


def test_initialization_schemes_and_zero_biases():
  arch = cnn.Architecture()
  fan_in, fan_out = 5 * 5 * 3, 5 * 5 * 8
  limit = np.sqrt(6 / (fan_in + fan_out))
  const, _ = init(jax.random.PRNGKey(0), arch, jnp.int32(0))
  normal, _ = init(jax.random.PRNGKey(0), arch, jnp.int32(1))
  uniform, stats = init(jax.random.PRNGKey(0), arch, jnp.int32(2))
  gnormal, _ = init(jax.random.PRNGKey(0), arch, jnp.int32(3))
  assert np.all(np.asarray(const['conv_00']['kernel']) == np.float32(0.1))
  assert abs(float(normal['dense_00']['kernel'].std()) - 1.0) < 0.02
  k = np.asarray(uniform['conv_00']['kernel'])
  assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
  assert abs(float(gnormal['dense_00']['kernel'].std()) - np.sqrt(2 / (512 + 128))) < 0.003
  for layer in uniform.values():
    assert np.all(np.asarray(layer['bias']) == 0)
    if 'beta' in layer:
      assert np.all(np.asarray(layer['beta']) == 0)
      assert np.abs(np.asarray(layer['gamma']) - 1).max() < 0.02
  assert np.all(np.asarray(stats['conv_00']['var']) == 1)


@pytest.mark.parametrize('index,fn', [(0, jax.nn.relu), (1, jax.nn.elu), (2, jax.nn.sigmoid),
                                      (3, jnp.tanh)])
def test_activation_is_selected_by_index(index, fn):
  x = jnp.linspace(-3, 3, 11)
  np.testing.assert_allclose(cnn.activate(x, jnp.int32(index)), fn(x), rtol=1e-6)
  vmapped = jax.vmap(cnn.activate, in_axes=(None, 0))(x, jnp.array([index, 0]))
  np.testing.assert_allclose(vmapped[0], fn(x), rtol=1e-6)


@pytest.mark.parametrize('k', [3, 5, 7])
def test_im2col_convolution_equals_lax_convolution(k):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 3, 4))
  np.testing.assert_allclose(cnn.conv2d(x, w, 'im2col'), cnn.conv2d(x, w, 'lax'), atol=1e-4)


def test_batch_norm_updates_moving_averages_in_training_only():
  arch = cnn.Architecture()
  params, stats = init(jax.random.PRNGKey(0), arch, jnp.int32(2))
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 32, 32, 3))
  _, trained = apply(params, stats, images, 0, arch=arch, train=True,
                         dropout_key=jax.random.PRNGKey(2))
  _, evaluated = apply(params, stats, images, 0, arch=arch, train=False)
  jax.tree.map(np.testing.assert_array_equal, evaluated, stats)
  # Decay 0.9: the new mean is 0.1 × the batch mean of the first conv's pre-activations.
  pre = cnn.conv2d(images, params['conv_00']['kernel']) + params['conv_00']['bias']
  np.testing.assert_allclose(trained['conv_00']['mean'], 0.1 * pre.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_dropout_only_in_training():
  arch = cnn.Architecture()
  params, stats = init(jax.random.PRNGKey(0), arch, jnp.int32(2))
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
  a, _ = apply(params, stats, images, 0, arch=arch, train=True,
                   dropout_key=jax.random.PRNGKey(5))
  b, _ = apply(params, stats, images, 0, arch=arch, train=True,
                   dropout_key=jax.random.PRNGKey(6))
  assert not np.allclose(a, b)
  c, _ = apply(params, stats, images, 0, arch=arch, train=False)
  d, _ = apply(params, stats, images, 0, arch=arch, train=False)
  np.testing.assert_array_equal(c, d)


@pytest.mark.parametrize('rows,k,n,chunk_k', [(64, 512, 128, True), (2048, 75, 8, True),
                                             (300, 130, 7, True), (300, 130, 7, False)])
def test_chunked_matmul_equals_a_plain_one_with_its_gradients(rows, k, n, chunk_k):
  # cnn.matmul contracts in fixed chunks (the same last bits on any XLA:CPU thread count); its
  # value and both gradients are the plain product's to float tolerance, under vmap too.
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (2, rows, k))
  w = jax.random.normal(keys[1], (2, k, n))
  g = jax.random.normal(keys[2], (2, rows, n))

  def vjp(fn):
    out, back = jax.vjp(jax.vmap(fn), x, w)
    return (out,) + back(g)

  ours = vjp(lambda a, b: cnn.matmul(a, b, chunk_k))
  plain = vjp(lambda a, b: jnp.matmul(a, b, precision=cnn.PRECISION))
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-4 * np.sqrt(max(rows, k)))


def test_chunks_split_a_length_evenly():
  assert cnn._chunks(512, 128) == 4
  assert cnn._chunks(65536, 128) == 512
  assert cnn._chunks(75, 128) == 1
  assert cnn._chunks(130, 128) == 2   # two chunks of 65
  assert cnn._chunks(7 * 7 * 96, 128) == 42  # the widest 7x7 conv's K: chunks of 112
