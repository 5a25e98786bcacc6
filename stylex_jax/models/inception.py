"""InceptionV3 pool3 feature extractor for FID/KID: the "FID Inception" of TF's `pt_inception-2015-12-05`.

Pure Flax Linen (imports only jax/flax/numpy; the weights file is read with numpy). This is the network that
TensorFlow's FID graph, NVIDIA's StyleGAN metrics and pytorch-fid (`fid_inception_v3`, blocks `FIDInceptionA`,
`FIDInceptionC`, `FIDInceptionE_1`, `FIDInceptionE_2`) use, so FID/KID computed on its 2048-d pool3 features are
comparable with published numbers. NHWC throughout. It differs from torchvision's ImageNet `inception_v3` in:
  * the 3x3 average pools of the A, C and E blocks exclude the zero padding from the mean
    (TF semantics, torch `count_include_pad=False`);
  * the pool branch of the last E block (`Mixed_7c`) is a 3x3 / stride-1 / pad-1 MAX pool;
  * its weights (TF 2015 graph, 1008-way classifier, no aux head).
Every conv is BasicConv2d = conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU. The BatchNorm is
folded into the conv at load time (kernel * gamma / sqrt(var + eps), bias = beta - mean * gamma / sqrt(var + eps)),
so the model has only 'params' (one HWIO `kernel` and one `bias` per conv) and no mutable state.

Input: images [B, H, W, C] float in [-1, 1] (the range the FID graph expects; values outside are clipped),
C = 1 (repeated to 3 channels) or 3. They are resized bilinearly (half-pixel centres, i.e. torch
`align_corners=False`; no antialiasing by default, as pytorch-fid's `F.interpolate`) to `resize_to` x `resize_to`
(299 for FID; `None` keeps the size). The architecture needs at least 75 x 75 pixels. Output: pool3 features
[B, 2048] float32 (spatial mean of `Mixed_7c`, which is 8 x 8 at 299 x 299).

Weights. Nothing is downloaded; the user supplies pytorch-fid's port of the TF graph as an .npz whose keys are the
torch state-dict names ('Conv2d_1a_3x3.conv.weight' [32, 3, 3, 3] OIHW, 'Conv2d_1a_3x3.bn.running_mean', ...,
'Mixed_7c.branch_pool.bn.bias'). Recipe, on any machine with torch (pytorch-fid's FID_WEIGHTS_URL file):

    import numpy, torch
    url = 'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth'
    torch.hub.download_url_to_file(url, 'pt_inception-2015-12-05-6726825d.pth')
    sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu')
    numpy.savez('pt_inception-2015-12-05.npz', **{k: v.numpy() for k, v in sd.items()})

then set `config.gan.inception_weights=/path/to/pt_inception-2015-12-05.npz`. The classifier head ('fc.weight'
[1008, 2048], 'fc.bias') and BatchNorm 'num_batches_tracked' counters may be present and are ignored.

    variables = load_inception_params(path)                       # {'params': ...}
    feats = InceptionV3().apply(variables, images)                # [B, 2048]
    extract = inception_feature_fn(path, batch_size=64)           # numpy in, float64 [N, 2048] out
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURE_DIM = 2048  # pool3 width
FID_SIZE = 299  # input size of the FID graph
MIN_SIZE = 75  # smallest input the architecture accepts (1 x 1 after Mixed_7a)
BN_EPS = 1e-3  # BatchNorm epsilon of the TF graph / torchvision BasicConv2d
FC_CLASSES = 1008  # classifier width of the FID graph (ignored, but checked when present)

_RECIPE = ("produce it from pytorch-fid's weights with: sd = torch.load('pt_inception-2015-12-05-6726825d.pth'); "
           'numpy.savez(out, **{k: v.numpy() for k, v in sd.items()}) (see stylex_jax/models/inception.py)')


def _pair(v) -> tuple[int, int]:
  return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


class BasicConv(nn.Module):
  """Conv (stride, symmetric zero padding) + folded inference BatchNorm + ReLU.

    x: [B, H, W, Cin] -> [B, (H + 2 ph - kh) // s + 1, (W + 2 pw - kw) // s + 1, features], values >= 0.
    Params: 'kernel' [kh, kw, Cin, features] (HWIO, BN scale folded in), 'bias' [features] (BN shift).
    """
  features: int
  kernel_size: Any = 1  # int or (kh, kw)
  strides: int = 1
  padding: Any = 0  # int or (ph, pw)
  precision: Any = 'highest'  # lax precision of the conv; 'highest' keeps float32 on TPU/GPU (FID fidelity)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = _pair(self.kernel_size)
    ph, pw = _pair(self.padding)
    kernel = self.param('kernel', nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    y = jax.lax.conv_general_dilated(x, kernel, window_strides=(self.strides, self.strides),
                                     padding=((ph, ph), (pw, pw)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=self.precision)
    return nn.relu(y + bias)


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
  """3x3 stride-1 'same' average pool whose border means divide by the number of real pixels (TF semantics)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 max pool with 1 pixel of -inf padding (spatial size kept)."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 stride-2 'valid' max pool: H -> (H - 3) // 2 + 1."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/c/d): [1x1 64 | 1x1 48 -> 5x5 64 | 1x1 64 -> 3x3 96 -> 3x3 96 | avgpool -> 1x1 pool].

    x: [B, H, W, Cin] -> [B, H, W, 224 + pool_features].
    """
  pool_features: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv(*a, precision=self.precision, **k)  # noqa: E731
    b1 = conv(64, name='branch1x1')(x)
    b5 = conv(48, name='branch5x5_1')(x)
    b5 = conv(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = conv(64, name='branch3x3dbl_1')(x)
    b3 = conv(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = conv(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, name='branch_pool')(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a): [3x3/2 384 | 1x1 64 -> 3x3 96 -> 3x3/2 96 | maxpool 3x3/2].

    x: [B, H, W, Cin] -> [B, (H - 3) // 2 + 1, (W - 3) // 2 + 1, 480 + Cin].
    """
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv(*a, precision=self.precision, **k)  # noqa: E731
    b3 = conv(384, 3, strides=2, name='branch3x3')(x)
    bd = conv(64, name='branch3x3dbl_1')(x)
    bd = conv(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = conv(96, 3, strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convs (Mixed_6b..e), c7 = channels_7x7:
    [1x1 192 | 1x1 c7 -> 1x7 c7 -> 7x1 192 | 1x1 c7 -> 7x1 c7 -> 1x7 c7 -> 7x1 c7 -> 1x7 192 | avgpool -> 1x1 192].

    x: [B, H, W, Cin] -> [B, H, W, 768].
    """
  channels_7x7: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv(*a, precision=self.precision, **k)  # noqa: E731
    c7 = self.channels_7x7
    b1 = conv(192, name='branch1x1')(x)
    b7 = conv(c7, name='branch7x7_1')(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = conv(c7, name='branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = conv(192, name='branch_pool')(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a): [1x1 192 -> 3x3/2 320 | 1x1 192 -> 1x7 -> 7x1 -> 3x3/2 192 | maxpool 3x3/2].

    x: [B, H, W, Cin] -> [B, (H - 3) // 2 + 1, (W - 3) // 2 + 1, 512 + Cin].
    """
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv(*a, precision=self.precision, **k)  # noqa: E731
    b3 = conv(192, name='branch3x3_1')(x)
    b3 = conv(320, 3, strides=2, name='branch3x3_2')(b3)
    b7 = conv(192, name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, 3, strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with expanded filter banks (Mixed_7b: pool='avg', Mixed_7c: pool='max', the FID graph's quirk):
    [1x1 320 | 1x1 384 -> (1x3 384, 3x1 384) | 1x1 448 -> 3x3 384 -> (1x3 384, 3x1 384) | pool -> 1x1 192].

    x: [B, H, W, Cin] -> [B, H, W, 2048].
    """
  pool: str = 'avg'
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv(*a, precision=self.precision, **k)  # noqa: E731
    b1 = conv(320, name='branch1x1')(x)
    b3 = conv(384, name='branch3x3_1')(x)
    b3 = [
        conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)
    ]
    bd = conv(448, name='branch3x3dbl_1')(x)
    bd = conv(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = [
        conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)
    ]
    pooled = _max_pool_3x3_same(x) if self.pool == 'max' else _avg_pool_3x3_exclude_pad(x)
    bp = conv(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3 up to pool3.

    __call__(images [B, H, W, C] float in [-1, 1], C 1 or 3) -> features [B, 2048] float32 (>= 0).
    Fields: resize_to — square size the images are bilinearly resized to (299 = FID; None = keep, then H, W >= 75);
    antialias — antialias when downsampling (False = pytorch-fid / NVIDIA behaviour); precision — conv precision.
    Submodule names are the torch state-dict prefixes ('Conv2d_1a_3x3', 'Mixed_5b', ... 'Mixed_7c').
    """
  resize_to: int | None = FID_SIZE
  antialias: bool = False
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'InceptionV3: images must be [B, H, W, C] with C = 1 or 3, got shape {images.shape}; '
                       'pass NHWC grayscale or RGB images in [-1, 1].')
    if self.resize_to is not None and (not isinstance(self.resize_to, (int, np.integer)) or self.resize_to < MIN_SIZE):
      raise ValueError(f'InceptionV3: resize_to must be an int >= {MIN_SIZE} (299 for FID) or None, '
                       f'got {self.resize_to!r}.')
    x = jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
    if self.resize_to is not None and x.shape[1:3] != (self.resize_to, self.resize_to):
      x = jax.image.resize(x, (x.shape[0], self.resize_to, self.resize_to, x.shape[-1]), method='bilinear',
                           antialias=self.antialias)
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f'InceptionV3: images of {x.shape[1]}x{x.shape[2]} are too small, the network needs at '
                       f'least {MIN_SIZE}x{MIN_SIZE}; set resize_to (299 for FID).')
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    p = self.precision
    x = BasicConv(32, 3, strides=2, precision=p, name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, 3, precision=p, name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, 3, padding=1, precision=p, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, 1, precision=p, name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, 3, precision=p, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, precision=p, name='Mixed_5b')(x)
    x = InceptionA(64, precision=p, name='Mixed_5c')(x)
    x = InceptionA(64, precision=p, name='Mixed_5d')(x)
    x = InceptionB(precision=p, name='Mixed_6a')(x)
    x = InceptionC(128, precision=p, name='Mixed_6b')(x)
    x = InceptionC(160, precision=p, name='Mixed_6c')(x)
    x = InceptionC(160, precision=p, name='Mixed_6d')(x)
    x = InceptionC(192, precision=p, name='Mixed_6e')(x)
    x = InceptionD(precision=p, name='Mixed_7a')(x)
    x = InceptionE('avg', precision=p, name='Mixed_7b')(x)
    x = InceptionE('max', precision=p, name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------------------------- weights

_BN_FIELDS = ('weight', 'bias', 'running_mean', 'running_var')


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
  """The required state-dict keys of the FID Inception and their torch shapes (conv weights OIHW [O, I, kh, kw],
    BatchNorm vectors [O]), derived from `InceptionV3`'s parameter tree (no computation: jax.eval_shape)."""
  abstract = jax.eval_shape(
      InceptionV3(resize_to=None).init, jax.random.key(0), jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3),
                                                                                jnp.float32))['params']
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    names = [k.key for k in path]
    if names[-1] != 'kernel':
      continue
    prefix = '.'.join(names[:-1])
    kh, kw, cin, cout = leaf.shape
    shapes[f'{prefix}.conv.weight'] = (cout, cin, kh, kw)
    for field in _BN_FIELDS:
      shapes[f'{prefix}.bn.{field}'] = (cout,)
  return shapes


def _read_npz(path: str) -> dict[str, np.ndarray]:
  if not isinstance(path, (str, os.PathLike)) or not str(path):
    raise ValueError(f'Inception weights: expected the path of an .npz file, got {path!r}; {_RECIPE}.')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Inception weights: no file at {path!r}; {_RECIPE}.')
  try:
    with np.load(path, allow_pickle=False) as npz:
      if not hasattr(npz, 'files'):
        raise ValueError('a single array, not a dict of arrays')
      return {k: np.asarray(npz[k]) for k in npz.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f'Inception weights: {path!r} is not a readable .npz of named arrays ({e}); {_RECIPE}.')


def _list(names: Sequence[str], n: int = 5) -> str:
  names = sorted(names)
  return ', '.join(names[:n]) + (f' (+{len(names) - n} more)' if len(names) > n else '')


def load_inception_params(path: str) -> dict:
  """Reads the FID Inception weights from an .npz of torch state-dict arrays; returns `{'params': params}` for
    `InceptionV3().apply`, with conv kernels transposed OIHW -> HWIO and each BatchNorm folded into its conv
    (float64 folding, float32 result).

    Raises FileNotFoundError (no file) or ValueError (not an npz; missing or unexpected keys; shape mismatches;
    non-finite values or negative running variances; torchvision ImageNet weights instead of the FID ones), naming
    the first offending keys and how to produce the file.
    """
  sd = _read_npz(path)
  expected = expected_torch_shapes()
  optional = {
      k for k in sd if k.endswith('.bn.num_batches_tracked') and k[:-len('num_batches_tracked')] + 'weight' in expected
  }
  optional |= {k for k in ('fc.weight', 'fc.bias') if k in sd}
  unexpected = [k for k in sd if k not in expected and k not in optional]
  missing = [k for k in expected if k not in sd]
  fc_rows = sd['fc.weight'].shape[0] if 'fc.weight' in sd and sd['fc.weight'].ndim == 2 else FC_CLASSES
  if any(k.startswith('AuxLogits.') for k in unexpected) or fc_rows != FC_CLASSES:
    raise ValueError(f'Inception weights: {path!r} looks like torchvision\'s ImageNet inception_v3 (aux head / '
                     f'{fc_rows}-way fc), not the FID Inception (pt_inception-2015-12-05, 1008-way); {_RECIPE}.')
  if missing or unexpected:
    parts = ([f'missing keys: {_list(missing)}'] if missing else []) + ([f'unexpected keys: {_list(unexpected)}']
                                                                        if unexpected else [])
    raise ValueError(f'Inception weights: {path!r} is not the FID InceptionV3 state dict ({"; ".join(parts)}); '
                     f'{_RECIPE}.')
  wanted = dict(expected, **{'fc.weight': (FC_CLASSES, FEATURE_DIM), 'fc.bias': (FC_CLASSES,)})
  bad = [
      f'{k} {tuple(sd[k].shape)} != {wanted[k]}' for k in sorted(wanted) if k in sd and tuple(sd[k].shape) != wanted[k]
  ]
  if bad:
    raise ValueError(f'Inception weights: shape mismatch in {path!r}: {_list(bad, 3)}; {_RECIPE}.')
  notfinite = [k for k in expected if not np.all(np.isfinite(sd[k]))]
  negvar = [k for k in expected if k.endswith('running_var') and np.any(sd[k] < 0)]
  if notfinite or negvar:
    raise ValueError(f'Inception weights: {path!r} is corrupt (non-finite: {_list(notfinite, 3) or "none"}; '
                     f'negative running_var: {_list(negvar, 3) or "none"}); {_RECIPE}.')

  params: dict = {}
  for key in expected:
    if not key.endswith('.conv.weight'):
      continue
    prefix = key[:-len('.conv.weight')]
    w = sd[key].astype(np.float64)  # [O, I, kh, kw]
    gamma, beta, mean, var = (sd[f'{prefix}.bn.{f}'].astype(np.float64) for f in _BN_FIELDS)
    scale = gamma / np.sqrt(var + BN_EPS)
    node = params
    for name in prefix.split('.'):
      node = node.setdefault(name, {})
    node['kernel'] = jnp.asarray(np.transpose(w * scale[:, None, None, None], (2, 3, 1, 0)), jnp.float32)
    node['bias'] = jnp.asarray(beta - mean * scale, jnp.float32)
  return {'params': params}


# ----------------------------------------------------------------------------------------------- extractor


def _check_images(images) -> np.ndarray:
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3], default=0) < 1:
    raise ValueError(f'inception features: images must be [N, H, W, C] with C = 1 or 3, got shape {x.shape}.')
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'inception features: images must be float in [-1, 1], got dtype {x.dtype}; convert uint8 '
                     'pixels with x / 127.5 - 1.')
  if x.size and not np.all(np.isfinite(x)):
    raise ValueError('inception features: images contain NaN or Inf; check the generator / data pipeline.')
  if x.size and x.min() >= 0 and x.max() > 2:
    raise ValueError(f'inception features: images look like [0, 255] pixels (range [{x.min():.3g}, '
                     f'{x.max():.3g}]); scale them to [-1, 1] with x / 127.5 - 1.')
  return x


def inception_feature_fn(path: str, batch_size: int = 64, *, resize_to: int | None = FID_SIZE,
                         antialias: bool = False) -> Callable[[np.ndarray], np.ndarray]:
  """Loads the weights at `path` once and returns a jitted extractor
    `features(images [N, H, W, C] float in [-1, 1], C 1 or 3) -> float64 [N, 2048]`.

    Images are processed in batches of `batch_size` (the last batch is zero-padded, so one compilation per image
    size). Values slightly outside [-1, 1] (unclamped generator outputs) are clipped; integer images or images
    that look like [0, 255] raise ValueError. `resize_to`/`antialias` as in `InceptionV3` (299 for FID).
    """
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f'inception_feature_fn: batch_size must be a positive int, got {batch_size!r}.')
  variables = load_inception_params(path)
  model = InceptionV3(resize_to=resize_to, antialias=antialias)
  apply = jax.jit(model.apply)
  bs = int(batch_size)

  def features(images) -> np.ndarray:
    x = _check_images(images)
    n = x.shape[0]
    out = np.zeros((n, FEATURE_DIM), np.float64)
    for i in range(0, n, bs):
      chunk = x[i:i + bs].astype(np.float32)
      m = chunk.shape[0]
      if m < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - m,) + chunk.shape[1:], np.float32)])
      out[i:i + m] = np.asarray(apply(variables, chunk), np.float64)[:m]
    return out

  return features
