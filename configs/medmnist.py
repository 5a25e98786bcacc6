"""Real medical images at 64²: PneumoniaMNIST, BreastMNIST and PathMNIST (MedMNIST+, manual download), all five
stages with configs/demo.py's tiny models, sized for a 2-core CPU.

Data: the official MedMNIST+ files from Zenodo (record 10519652, https://zenodo.org/records/10519652), e.g.
pneumoniamnist_64.npz, breastmnist_64.npz, pathmnist_64.npz, in one folder passed as config.data.manual_dir (TFDS
builder `medmnist`, see stylex_jax/data/builders/medmnist.py; prepared once into data_dir on first use). Without
the file (or without manual_dir) the run stops at once with one line naming the file, the folder and the record.

Launch — one command per dataset (trains the classifier to explain, a small StyleGAN2 and the image -> W+ encoder,
then explains 16 test images (seeded, class-balanced) in <workdir>/explain/report.html and scores them):
  python launch/train.py --config configs/medmnist.py:pneumonia --workdir /tmp/stylex_pneumonia \
      --config.data.manual_dir=/data/medmnist
Expected wall time on 2 CPU cores, measured on stand-in files of the official layout and split sizes
(benchmarks/medmnist_standin.py; the official files could not be downloaded on the measuring machine), dataset
preparation included: pneumonia 12 min 43 s, breast 12 min 58 s, path 17 min 56 s (benchmarks/README.md, "MedMNIST+
configs"). The model sizes and step counts are configs/demo.py's; pathmnist_64's train split (90k RGB tiles,
1.1 GB at 64²) is over the pipeline's 1 GiB in-memory cache, so it is read per batch.

Variants (`--config configs/medmnist.py:<variant>`):
  pneumonia  ('' too) pneumoniamnist_64, grey, normal vs pneumonia; explains the log-odds of pneumonia.
  breast     breastmnist_64, grey, malignant vs normal/benign; explains the log-odds of malignant (class 0).
  path       pathmnist_64, RGB, 9 tissue classes; explains one class vs the rest: the log-odds of colorectal
             adenocarcinoma epithelium (class 8) against the other 8 tissue types.
  <name>_smoke (and `smoke` = pneumonia_smoke)  the same data read at 32², a few steps of tiny models (as
             demo.py:smoke): checks a real-data install end to end; mostly XLA compilation (path_smoke on a
             synthetic 12/4/4-image file: 12.5 min on a busy, shared 2-core CPU with a cold compilation cache).
"""
import ml_collections

from configs import demo

DATASETS = ('pneumonia', 'breast', 'path')
VARIANTS = ('', 'smoke') + DATASETS + tuple(f'{name}_smoke' for name in DATASETS)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'unknown medmnist variant {arg!r}; choose one of {VARIANTS}')
  name = arg.removesuffix('_smoke') if arg not in ('', 'smoke') else 'pneumonia'
  smoke = arg.endswith('smoke')
  # configs/demo.py's models, steps, encoder, projector and explain settings (its smoke variant for *_smoke)
  config = demo.get_config('smoke' if smoke else '')
  # ADA on, as these configs were measured: BreastMNIST has 546 training images, the case ADA is for
  config.gan.update(demo.ADA_ON)
  d = config.data
  d.dataset = 'medmnist'
  d.manual_dir = ''  # REQUIRED: --config.data.manual_dir=<folder holding <name>_64.npz>
  d.image_size = 32 if smoke else 64  # smoke: the real 64² file read at 32²
  d.label_threshold = -1  # the datasets' own classes
  e = config.explain
  if name == 'pneumonia':
    d.builder_config, d.channels, d.num_classes = 'pneumoniamnist_64', 1, 2  # (normal, pneumonia)
    e.target, e.class_index = 'log_odds', 1  # pneumonia
  elif name == 'breast':
    d.builder_config, d.channels, d.num_classes = 'breastmnist_64', 1, 2  # (malignant, normal/benign)
    e.target, e.class_index = 'log_odds', 0  # malignant
  else:
    d.builder_config, d.channels, d.num_classes = 'pathmnist_64', 3, 9
    e.target, e.class_index = 'log_odds', 8  # colorectal adenocarcinoma epithelium vs the other 8 tissue types
  # pneumonia ~3:1, breast ~1:3 in train; PathMNIST's classes are near-balanced
  config.classifier.class_balanced = name != 'path'
  return config
