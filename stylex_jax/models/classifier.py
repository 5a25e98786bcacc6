"""ResNet family (He et al. 2016, torchvision "v1.5" layout): the image classifier that stylex_jax explains.

Pure Flax Linen; imports only jax/flax/numpy.

    model = create_classifier('resnet18', num_classes=5)
    variables = model.init(jax.random.key(0), images)          # {'params', 'batch_stats'}
    logits = model.apply(variables, images)                    # eval mode: running statistics
    logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])

`images` are NHWC float32 in [-1, 1] with 1 (radiograph) or 3 (histology) channels.

Training-mode BatchNorm normalises with the statistics of the batch it is given. Under `jax.jit` with the
batch sharded over a `NamedSharding`, that is the GLOBAL batch (XLA inserts the cross-device reduction),
so no `axis_name` is needed. Running statistics follow `ra = 0.9 * ra + 0.1 * batch_stat`, with the biased
(1/N) batch variance.

Named layers (for GradCAM and feature inspection). Each of these activations is both
  * sown:      `self.sow('intermediates', name, x)`  -> `state['intermediates'][name] == (x,)` when
               `mutable=['intermediates']` is passed to `apply`;
  * perturbed: `x = self.perturb(name, x)`           -> `d loss / d x` is the gradient w.r.t.
               `variables['perturbations'][name]` (see `stylex_jax.explain.gradcam`).
  'stem'              stem output                 [B, H/4, W/4, width] (imagenet) or [B, H, W, width] (small)
  'stage1'..'stageN'  output of residual stage i  spatial size halves per stage after the first,
                      N = len(stage_sizes)        channels width * 2**(i-1) * (1 basic | 4 bottleneck)
Neither collection is created by `model.init`, so initialised variables hold only 'params' (+ 'batch_stats').
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn

BLOCKS = ('basic', 'bottleneck')
STEMS = ('imagenet', 'small')
NORMS = ('batch', 'group')

PRESETS: dict[str, dict] = {
    # torchvision-equivalent architectures (11,689,512 / 21,797,672 / 25,557,032 params at 3 ch, 1000 classes).
    'resnet18': dict(stage_sizes=(2, 2, 2, 2), block='basic', width=64, stem='imagenet'),
    'resnet34': dict(stage_sizes=(3, 4, 6, 3), block='basic', width=64, stem='imagenet'),
    'resnet50': dict(stage_sizes=(3, 4, 6, 3), block='bottleneck', width=64, stem='imagenet'),
    # Tiny 4-stage net for 32-64 px images on a CPU (~0.3 M params); same layer names as the big ones.
    'demo': dict(stage_sizes=(1, 1, 1, 1), block='basic', width=16, stem='small'),
}

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # Kaiming-normal, fan_out (torchvision)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _validate(num_classes, stage_sizes, block, width, stem, norm) -> None:
  """Raises ValueError with one clear line if a ResNet hyper-parameter is invalid."""
  if not _is_int(num_classes) or num_classes < 1:
    raise ValueError(f'ResNet: num_classes must be a positive int, got {num_classes!r}.')
  if (not isinstance(stage_sizes, (tuple, list)) or len(stage_sizes) == 0 or
      not all(_is_int(s) and s >= 1 for s in stage_sizes)):
    raise ValueError(f'ResNet: stage_sizes must be a non-empty sequence of positive ints, e.g. (2, 2, 2, 2); '
                     f'got {stage_sizes!r}.')
  if block not in BLOCKS:
    raise ValueError(f'ResNet: unknown block {block!r}; valid blocks are {BLOCKS}.')
  if stem not in STEMS:
    raise ValueError(f'ResNet: unknown stem {stem!r}; valid stems are {STEMS}.')
  if norm not in NORMS:
    raise ValueError(f'ResNet: unknown norm {norm!r}; valid norms are {NORMS}.')
  if not _is_int(width) or width < 1:
    raise ValueError(f'ResNet: width must be a positive int, got {width!r}.')


class _Norm(nn.Module):
  """BatchNorm (momentum 0.9, eps 1e-5) or GroupNorm (gcd(C, 32) groups, eps 1e-5, no mutable state)."""
  kind: str
  zero_init: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    scale_init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
    if self.kind == 'batch':
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                          param_dtype=jnp.float32, scale_init=scale_init, name='norm')(x)
    groups = math.gcd(x.shape[-1], 32)
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                        scale_init=scale_init, name='norm')(x)


def _conv(features: int, kernel: int, stride: int, dtype, name: str) -> nn.Conv:
  pad = (kernel - 1) // 2  # torchvision padding (symmetric), not TF 'SAME'
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=_conv_init, dtype=dtype, param_dtype=jnp.float32, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs + identity/projection shortcut. x: [B, H, W, Cin] -> [B, H/stride, W/stride, features]."""
  features: int
  stride: int = 1
  norm: str = 'batch'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)
    y = nn.relu(_Norm(self.norm, dtype=self.dtype, name='norm1')(y, train))
    y = _conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    y = _Norm(self.norm, zero_init=True, dtype=self.dtype, name='norm2')(y, train)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, 1, self.stride, self.dtype, 'proj_conv')(x)
      x = _Norm(self.norm, dtype=self.dtype, name='proj_norm')(x, train)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (4x features) + shortcut. x: [B, H, W, Cin] -> [B, H/s, W/s, 4*features]."""
  features: int
  stride: int = 1
  norm: str = 'batch'
  dtype: Any = jnp.float32
  expansion: int = 4

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.features * self.expansion
    y = _conv(self.features, 1, 1, self.dtype, 'conv1')(x)
    y = nn.relu(_Norm(self.norm, dtype=self.dtype, name='norm1')(y, train))
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv2')(y)
    y = nn.relu(_Norm(self.norm, dtype=self.dtype, name='norm2')(y, train))
    y = _conv(out, 1, 1, self.dtype, 'conv3')(y)
    y = _Norm(self.norm, zero_init=True, dtype=self.dtype, name='norm3')(y, train)
    if self.stride != 1 or x.shape[-1] != out:
      x = _conv(out, 1, self.stride, self.dtype, 'proj_conv')(x)
      x = _Norm(self.norm, dtype=self.dtype, name='proj_norm')(x, train)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet classifier. See the module docstring for the named layers ('stem', 'stage1'..'stageN').

    Attributes:
      num_classes: number of output logits.
      stage_sizes: residual blocks per stage; stage i (1-based) has width * 2**(i-1) base channels and
        stride 2 except the first stage.
      block: 'basic' (ResNet-18/34) | 'bottleneck' (ResNet-50; 4x channel expansion).
      width: channels of the first stage.
      stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool, /4) | 'small' (3x3/1 conv, for 32-64 px inputs).
      norm: 'batch' (BatchNorm, state in 'batch_stats') | 'group' (GroupNorm, stateless).
      dtype: compute dtype (e.g. jnp.bfloat16 on GPU/TPU); parameters stay float32, logits are float32.
    """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  width: int = 64
  stem: str = 'imagenet'
  norm: str = 'batch'
  dtype: Any = jnp.float32

  def _named(self, name: str, x):
    """Sows `x` into 'intermediates' and makes it perturbable, except during `init` (keeps init clean)."""
    if self.is_initializing():
      return x
    self.sow('intermediates', name, x)
    return self.perturb(name, x)

  @nn.compact
  def __call__(self, images, train: bool = False, return_features: bool = False):
    """images: [B, H, W, C] float32 in [-1, 1], C in {1, 3}.

        Returns logits [B, num_classes] float32, or (logits, features) with features [B, D] float32 the
        globally average-pooled output of the last stage (D = width * 2**(N-1) * expansion) when
        `return_features=True`. With train=True and norm='batch', pass mutable=['batch_stats'] to `apply`.
        """
    _validate(self.num_classes, tuple(self.stage_sizes), self.block, self.width, self.stem, self.norm)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'ResNet expects images [B, H, W, C] with C = 1 or 3 (NHWC, float in [-1, 1]); '
                       f'got shape {tuple(images.shape)}. Transpose NCHW inputs / add a channel axis.')
    x = jnp.asarray(images, self.dtype)
    if self.stem == 'imagenet':
      x = _conv(self.width, 7, 2, self.dtype, 'stem_conv')(x)
      x = nn.relu(_Norm(self.norm, dtype=self.dtype, name='stem_norm')(x, train))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(self.width, 3, 1, self.dtype, 'stem_conv')(x)
      x = nn.relu(_Norm(self.norm, dtype=self.dtype, name='stem_norm')(x, train))
    x = self._named('stem', x)

    block_cls = BasicBlock if self.block == 'basic' else BottleneckBlock
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x = block_cls(self.width * 2**i, stride=stride, norm=self.norm, dtype=self.dtype,
                      name=f'stage{i + 1}_block{j + 1}')(x, train)
      x = self._named(f'stage{i + 1}', x)

    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      name='head')(features.astype(self.dtype))
    logits = logits.astype(jnp.float32)
    if return_features:
      return logits, features
    return logits


def layer_names(stage_sizes: Sequence[int]) -> tuple[str, ...]:
  """Names of the sown/perturbable activations of a ResNet with these stage sizes: ('stem', 'stage1', ...)."""
  return ('stem',) + tuple(f'stage{i + 1}' for i in range(len(stage_sizes)))


def create_classifier(preset: str = 'demo', *, num_classes: int, **overrides) -> ResNet:
  """Builds a ResNet from a preset ('resnet18' | 'resnet34' | 'resnet50' | 'demo') plus keyword overrides.

    Overrides are ResNet fields (stage_sizes, block, width, stem, norm, dtype), e.g.
    `create_classifier('resnet18', num_classes=5, stem='small', norm='group')`.
    Unknown presets, unknown override names and invalid values raise ValueError naming the valid choices.
    """
  if preset not in PRESETS:
    raise ValueError(f'Unknown classifier preset {preset!r}; valid presets are {sorted(PRESETS)}.')
  fields = ('stage_sizes', 'block', 'width', 'stem', 'norm', 'dtype')
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f'Unknown classifier override(s) {unknown}; valid overrides are {list(fields)} '
                     f'(num_classes is its own keyword).')
  kwargs = {**PRESETS[preset], **overrides}
  kwargs['stage_sizes'] = tuple(kwargs['stage_sizes']) if isinstance(kwargs['stage_sizes'], (list, tuple)) \
      else kwargs['stage_sizes']
  full = {f: kwargs.get(f, getattr(ResNet, f)) for f in fields}
  _validate(num_classes, full['stage_sizes'], full['block'], full['width'], full['stem'], full['norm'])
  return ResNet(num_classes=num_classes, **kwargs)
