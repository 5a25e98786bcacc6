"""numpy/scipy references shared by the layer and StyleGAN2 tests, written from the reference's definitions
(NVIDIA's upfirdn2d, modulated convolution), not from the JAX code: float64, NHWC."""
import math

import numpy as np
import scipy.signal

F4 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float64)
F4 /= F4.sum()


def np_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0, flip_filter=False):
  """x [B,H,W,C]; f [fh,fw]; zero-insert after each pixel, pad/crop (x0,x1,y0,y1), convolve (valid), subsample."""
  x0, x1, y0, y1 = pad
  b, h, w, c = x.shape
  out = None
  for bi in range(b):
    for ci in range(c):
      u = np.zeros((h * up, w * up))
      u[::up, ::up] = x[bi, :, :, ci]
      u = np.pad(u, ((max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
      u = u[max(-y0, 0):u.shape[0] - max(-y1, 0), max(-x0, 0):u.shape[1] - max(-x1, 0)]
      op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
      r = op(u, np.asarray(f, np.float64) * gain, mode='valid')[::down, ::down]
      if out is None:
        out = np.zeros((b,) + r.shape + (c,))
      out[bi, :, :, ci] = r
  return out


def np_corr_valid(x, w):
  """x [B,H,W,I], w [kh,kw,I,O] -> correlation, valid."""
  kh, kw = w.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
  for dy in range(kh):
    for dx in range(kw):
      out += np.einsum('bhwi,io->bhwo', x[:, dy:dy + ho, dx:dx + wo, :], w[dy, dx])
  return out


def np_corr_same(x, w):
  p = w.shape[0] // 2
  return np_corr_valid(np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), w)


def np_lrelu(x, gain=math.sqrt(2)):
  return np.where(x >= 0, x, 0.2 * x) * gain


def np_modconv(x, weight, styles, up=1, demodulate=True):
  """Per-sample loop: modulate, demodulate, then conv (up=2: FIR-upsample with gain 4, then true conv)."""
  outs = []
  for b in range(x.shape[0]):
    w = weight * styles[b][None, None, :, None]
    if demodulate:
      w = w / np.sqrt(np.sum(w**2, axis=(0, 1, 2), keepdims=True) + 1e-8)
    xb = x[b:b + 1]
    if up == 1:
      outs.append(np_corr_same(xb, w))
    else:
      u = np_upfirdn2d(xb, F4, up=2, pad=(3, 2, 3, 2), gain=4.0)
      outs.append(np_corr_valid(u, w[::-1, ::-1]))
  return np.concatenate(outs, 0)
