"""Stand-in MedMNIST+ files for configs/medmnist.py where the official files cannot be downloaded (this project's
build machines reach package registries only): the project's phantom families written in the official layout
(`<name>_64.npz` with {train,val,test}_{images,labels}, uint8, labels [N, 1]) at the official split sizes, so each
config runs end to end at its real size, and its explanations can be scored with an oracle.

  python benchmarks/medmnist_standin.py make --out /tmp/medmnist_standin          # all three files
  python launch/train.py --config configs/medmnist.py:pneumonia --workdir /tmp/mm_pneumonia \\
      --config.data.manual_dir=/tmp/medmnist_standin
  python benchmarks/medmnist_standin.py score --dataset pneumonia --export /tmp/mm_pneumonia/explain

These are NOT the real datasets: their figures say how the configs run at the real sizes and whether the
explanations move the stand-in's causal attribute, not what a classifier learns from real images.
  pneumonia  pneumoniamnist_64 (4708/524/624): chest phantoms (benchmarks/chest_phantoms.py); class 1 ('pneumonia')
             = cardiomegaly (cardiothoracic ratio >= 0.5), class 0 ('normal') = CTR < 0.5. Causal: the CTR.
  breast     breastmnist_64 (546/78/156): chest phantoms again, class 0 ('malignant') = cardiomegaly, class 1 =
             CTR < 0.5; the small-data case (546 training images) with the config's class-0 target.
  path       pathmnist_64 (89996/10004/7180): RGB histology phantoms (data/histology_phantoms.histology_tile);
             class 8 (adenocarcinoma epithelium, the config's target) = tumour tiles, one ninth of each split;
             classes 0-7 = normal tiles with a random class, so only class 8 vs the rest is learnable. Each drawn
             tile appears in its 8 rotations/flips (drawing 107k tiles would take ~40 CPU-minutes). Causal: nuclear
             count, size and darkness (`measure.measure_histology`).

`score` prints one line per figure: for each causal attribute, the share of series in which it moves the way the
explained class implies (signed Spearman with the shift > 0) and the median signed Spearman; the share of series
in which all of them do; the share of frames the oracle can read.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import chest_phantoms  # noqa: E402
from stylex_jax.data import histology_phantoms, measure  # noqa: E402
from stylex_jax.evaluate import explanations  # noqa: E402

SIZE = 64
# official MedMNIST+ split sizes (train, val, test)
SPLITS = dict(pneumonia=(4708, 524, 624), breast=(546, 78, 156), path=(89996, 10004, 7180))
FILES = dict(pneumonia='pneumoniamnist_64.npz', breast='breastmnist_64.npz', path='pathmnist_64.npz')
POSITIVE = dict(pneumonia=1, breast=0, path=8)  # the class the stand-in's disease is (the configs' targets)
# causal attributes of each stand-in, and the sign of their change towards the positive class
CAUSAL = dict(pneumonia={'ctr': 1.0}, breast={'ctr': 1.0}, path={
    'nuclear_count': 1.0,
    'nuclear_mean_area': 1.0,
    'nuclear_darkness': 1.0
})


def _chest(rng: np.random.Generator, n: int, positive: int) -> tuple[np.ndarray, np.ndarray]:
  attrs = chest_phantoms.draw_attributes(rng, n)
  images = np.stack([np.round(chest_phantoms.render(attrs, i, SIZE, rng) * 255) for i in range(n)]).astype(np.uint8)
  sick = attrs['ctr'] >= chest_phantoms.CTR_THRESHOLD
  return images, np.where(sick, positive, 1 - positive).astype(np.uint8)


def _histology(rng: np.random.Generator, n: int, seed_base: int) -> tuple[np.ndarray, np.ndarray]:
  unique = -(-n // 8)
  tiles, labels = [], []
  for i in range(unique):
    tumour = int(rng.random() < 1 / 9)
    tile, label, _ = histology_phantoms.histology_tile(seed_base + i, SIZE, label=tumour)
    cls = 8 if label == 1 else int(rng.integers(0, 8))
    for k in range(8):  # the dihedral group: 4 rotations x (flipped or not)
      t = np.rot90(tile, k % 4)
      tiles.append(np.ascontiguousarray(t[:, ::-1] if k >= 4 else t))
      labels.append(cls)
  order = rng.permutation(len(tiles))[:n]
  return np.stack(tiles)[order], np.asarray(labels, np.uint8)[order]


def make(out: str, dataset: str, seed: int = 0) -> str:
  """Writes the stand-in file of `dataset` into `out`; returns its path. Never overwrites an existing file."""
  path = os.path.join(out, FILES[dataset])
  if os.path.exists(path):
    raise SystemExit(f'{path} exists: give a new folder (existing files are never overwritten)')
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for s, (split, n) in enumerate(zip(('train', 'val', 'test'), SPLITS[dataset])):
    if dataset == 'path':
      images, labels = _histology(rng, n, seed_base=(seed * 3 + s) * 10**6)
    else:
      images, labels = _chest(rng, n, POSITIVE[dataset])
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = images, labels[:, None]
  tmp = path + '.partial.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def _measure(dataset: str, frames_u8: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Oracle values of frames [S, H, W, C] uint8 -> ({attribute: [S]}, readable [S] bool)."""
  if dataset == 'path':
    m = measure.measure_histology_batch(np.asarray(frames_u8, np.uint8))
    return m, np.all([np.isfinite(m[a]) for a in CAUSAL[dataset]], axis=0)
  m = chest_phantoms.measure_ctr_batch(frames_u8[..., 0].astype(np.float64) / 255.0)
  return m, m['lungs_found'] > 0


def score(dataset: str, export: str) -> dict[str, float]:
  """Scores an explanation export of a stand-in file with its oracle (see the module docstring)."""
  from stylex_jax.explain import records

  schema = records.read_schema(export)
  names = [str(n) for n in schema.get('class_names', [])]
  found = re.search(r"of class '(.+?)'", schema.get('target_description', ''))
  if found is None or found.group(1) not in names:
    raise SystemExit(f'{export}: its target ({schema.get("target_description")!r}) names none of its classes {names}')
  explained = names.index(found.group(1))
  if explained != POSITIVE[dataset]:
    raise SystemExit(f'{export} explains class {explained} ({names[explained]!r}); the {dataset} stand-in scores '
                     f'explanations of class {POSITIVE[dataset]} (configs/medmnist.py:{dataset})')
  rho = {a: [] for a in CAUSAL[dataset]}
  readable = []
  for item in records.read_explanations(export):
    m, ok = _measure(dataset, item['series'])
    readable.append(ok)
    for a, sign in CAUSAL[dataset].items():
      rho[a].append(sign * explanations.spearman(np.asarray(item['alphas'], np.float64), m[a]))
  out = dict(series=len(readable))
  right = []
  for a, values in rho.items():
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    out[f'{a}_right_direction'] = float(np.mean(v[ok] > 0)) if ok.any() else np.nan
    out[f'{a}_median_spearman'] = float(np.median(v[ok])) if ok.any() else np.nan
    right.append(np.where(ok, v > 0, False))
  out['all_causal_right_direction'] = float(np.mean(np.all(right, axis=0))) if readable else np.nan
  out['frames_readable'] = float(np.mean(np.concatenate(readable))) if readable else np.nan
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  m = sub.add_parser('make', help='write the stand-in .npz files')
  m.add_argument('--out', required=True)
  m.add_argument('--datasets', default='pneumonia,breast,path', help='comma-separated: pneumonia, breast, path')
  m.add_argument('--seed', type=int, default=0)
  s = sub.add_parser('score', help='score an explanation export of a stand-in file')
  s.add_argument('--dataset', required=True, choices=sorted(SPLITS))
  s.add_argument('--export', required=True, help='the explain stage folder (holds schema.json)')
  args = parser.parse_args()
  if args.command == 'make':
    datasets = [d.strip() for d in args.datasets.split(',') if d.strip()]
    unknown = sorted(set(datasets) - set(SPLITS))
    if unknown or not datasets:
      raise SystemExit(f'--datasets: unknown {unknown}; choose from {sorted(SPLITS)}')
    for d in datasets:
      print(f'{d} {make(args.out, d, args.seed)}')
  else:
    for key, value in score(args.dataset, args.export).items():
      print(f'{key} {value:.3f}' if isinstance(value, float) else f'{key} {value}')


if __name__ == '__main__':
  main()
