"""TFDS builder `medmnist`: the 2D single-label MedMNIST+ datasets at 28, 64, 128 and 224 px (manual download).

Source: MedMNIST v2 / MedMNIST+ (Yang et al., Scientific Data 2023), published on Zenodo, record 10519652
(https://zenodo.org/records/10519652), one `.npz` file per dataset and size:

    <manual_dir>/<name>_<size>.npz     size 64, 128 or 224, e.g. pneumoniamnist_64.npz
    <manual_dir>/<name>.npz            size 28, e.g. pneumoniamnist.npz

each holding `train_images`, `train_labels`, `val_images`, `val_labels`, `test_images`, `test_labels`; images
uint8 [N, S, S] (grey) or [N, S, S, 3] (RGB), labels int [N, 1]. Download the files you need yourself (no
`medmnist` package needed) and point `manual_dir` (config.data.manual_dir) at the folder holding them:

    --config.data.dataset=medmnist --config.data.builder_config=pneumoniamnist_64 --config.data.manual_dir=DIR

Builder configs `<name>_<size>` for size in (28, 64, 128, 224) and name in `DATASETS`: pathmnist (9 classes, RGB),
dermamnist (7, RGB), octmnist (4, grey), pneumoniamnist (2, grey), retinamnist (5 ordinal grades, RGB),
breastmnist (2, grey), bloodmnist (8, RGB), tissuemnist (8, grey), organamnist / organcmnist / organsmnist
(11, grey); default `pneumoniamnist_64`. The class names are MedMNIST's official label names. ChestMNIST is
refused: it is multi-label (14 findings per image), and the explainer needs one class label per image.

Stored as: `image` uint8 (S, S, C) PNG (C = 1 grey, 3 RGB), `label` ClassLabel(official names), `id` Text
'<file split>/<index:06d>' ('val/000012' is `val_images[12]` of the file). Splits train / validation (the file's
`val_*`) / test. The file is read with `np.load(allow_pickle=False)`, one split's arrays at a time (the largest,
tissuemnist_224 / pathmnist_224 train, need ~8 / ~14 GB of memory while being prepared).

Errors (each one line): no file -> FileNotFoundError naming the file, the folder and the Zenodo record; a missing
key, a wrong dtype, shape or channel count, or labels out of range -> ValueError naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SIZES = (28, 64, 128, 224)
ZENODO = 'MedMNIST+ on Zenodo, record 10519652, https://zenodo.org/records/10519652'
HOMEPAGE = 'https://medmnist.com/'
# file split prefix -> TFDS split name (configs/base.py: train_split / eval_split / test_split)
SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}

ORGAN_NAMES = ('bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver', 'lung-left',
               'lung-right', 'pancreas', 'spleen')
# name -> (channels, official class names, description)
DATASETS = {
    'pathmnist': (3, ('adipose', 'background', 'debris', 'lymphocytes', 'mucus', 'smooth muscle', 'normal colon mucosa',
                      'cancer-associated stroma', 'colorectal adenocarcinoma epithelium'),
                  'colon pathology tiles (NCT-CRC-HE-100K / CRC-VAL-HE-7K), 9 tissue types'),
    'dermamnist': (3, ('actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma',
                       'benign keratosis-like lesions', 'dermatofibroma', 'melanoma', 'melanocytic nevi',
                       'vascular lesions'), 'dermatoscopy (HAM10000), 7 diagnoses'),
    'octmnist':
        (1, ('choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'), 'retinal OCT, 4 diagnoses'),
    'pneumoniamnist': (1, ('normal', 'pneumonia'), 'paediatric chest X-ray, pneumonia vs normal'),
    'retinamnist': (3, ('0', '1', '2', '3', '4'), 'fundus camera (DeepDRiD), 5 ordinal diabetic retinopathy grades'),
    'breastmnist': (1, ('malignant', 'normal, benign'), 'breast ultrasound, malignant vs normal/benign'),
    'bloodmnist': (3, ('basophil', 'eosinophil', 'erythroblast',
                       'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)', 'lymphocyte', 'monocyte',
                       'neutrophil', 'platelet'), 'blood cell microscopy, 8 cell types'),
    'tissuemnist': (1, ('Collecting Duct, Connecting Tubule', 'Distal Convoluted Tubule',
                        'Glomerular endothelial cells', 'Interstitial endothelial cells', 'Leukocytes', 'Podocytes',
                        'Proximal Tubule Segments', 'Thick Ascending Limb'), 'kidney cortex microscopy, 8 cell types'),
    'organamnist': (1, ORGAN_NAMES, 'abdominal CT, axial slices, 11 organs'),
    'organcmnist': (1, ORGAN_NAMES, 'abdominal CT, coronal slices, 11 organs'),
    'organsmnist': (1, ORGAN_NAMES, 'abdominal CT, sagittal slices, 11 organs'),
}
MULTI_LABEL = {'chestmnist': 'ChestMNIST is multi-label (14 findings per image, each 0/1)'}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the MedMNIST+ .npz files you need from {ZENODO}, and pass the folder holding them as manual_dir
(config.data.manual_dir, or tfds.download.DownloadConfig(manual_dir=...)). Expected file per builder config:
  <manual_dir>/<name>_<size>.npz   (size 64, 128, 224; e.g. pneumoniamnist_64.npz)
  <manual_dir>/<name>.npz          (size 28; e.g. pneumoniamnist.npz)
"""


def file_name(dataset: str, size: int) -> str:
  """The official file name of `dataset` at `size` px: '<dataset>.npz' for 28, else '<dataset>_<size>.npz'."""
  return f'{dataset}.npz' if size == 28 else f'{dataset}_{size}.npz'


def missing_file_error(dataset: str, size: int, folder: str | None) -> FileNotFoundError:
  """The one error for a file that is not there."""
  return FileNotFoundError(
      f'medmnist/{dataset}_{size}: {file_name(dataset, size)} not found in {folder or "(no folder)"}; download it '
      f'from {ZENODO} and set --config.data.manual_dir to the folder holding it')


def multi_label_error(config_name: str) -> ValueError:
  dataset = config_name.split('_')[0]
  return ValueError(
      f'medmnist/{config_name}: {MULTI_LABEL[dataset]}; the explainer needs exactly one class label per image, so it '
      f'is not supported; choose one of {sorted(DATASETS)}')


def _file_error(path: str, key: str, problem: str) -> ValueError:
  return ValueError(f'{path}: key {key!r} {problem}')


@dataclasses.dataclass(eq=False)
class MedMnistConfig(tfds.core.BuilderConfig):
  """One MedMNIST+ dataset at one size.

  dataset: a key of `DATASETS` (e.g. 'pneumoniamnist'). size: 28, 64, 128 or 224 (image side in px).
  channels: 1 (grey) or 3 (RGB), as stored in the file. class_names: the official label names, index = label.
  """
  dataset: str = 'pneumoniamnist'
  size: int = 64
  channels: int = 1
  class_names: tuple[str, ...] = ()

  @property
  def file_name(self) -> str:
    return file_name(self.dataset, self.size)


def _config(dataset: str, size: int) -> MedMnistConfig:
  channels, names, description = DATASETS[dataset]
  return MedMnistConfig(
      name=f'{dataset}_{size}', dataset=dataset, size=size, channels=channels, class_names=tuple(names),
      description=f'{dataset} at {size}x{size}: {description}; {len(names)} classes, '
      f'{"RGB" if channels == 3 else "grey"} (file {file_name(dataset, size)}).')


def _array_header(npz, path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of `key` in the open .npz, read from its .npy header (the data stay on disk)."""
  if key not in npz.files:
    raise _file_error(
        path, key, f'is missing (the file has {sorted(npz.files)}); expected the official MedMNIST '
        'layout {train,val,test}_{images,labels}')
  with npz.zip.open(f'{key}.npy') as fp:
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fp)
  return tuple(shape), np.dtype(dtype)


def check_file(path: str, config: MedMnistConfig) -> dict[str, int]:
  """Checks every key's dtype and shape against `config` (headers only). Returns {file split: N}.

  Raises ValueError naming the file and the key (a missing key, wrong dtype / shape / channel count, multi-label).
  """
  s, c = config.size, config.channels
  expected = f'[N, {s}, {s}]' if c == 1 else f'[N, {s}, {s}, 3]'
  counts = {}
  with np.load(path, allow_pickle=False) as npz:
    for prefix in SPLITS:
      key = f'{prefix}_images'
      shape, dtype = _array_header(npz, path, key)
      if dtype != np.uint8:
        raise _file_error(path, key, f'has dtype {dtype}; expected uint8 {expected}')
      grey = len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1)
      rgb = len(shape) == 4 and shape[-1] == 3
      if len(shape) not in (3, 4) or tuple(shape[1:3]) != (s, s) or not (grey or rgb):
        raise _file_error(path, key, f'has shape {list(shape)}; expected {expected} for {config.name}')
      if (3 if rgb else 1) != c:
        raise _file_error(
            path, key, f'has {"RGB" if rgb else "grey"} images {list(shape)}; {config.dataset} is '
            f'{"RGB" if c == 3 else "grey"}, expected {expected}')
      key = f'{prefix}_labels'
      label_shape, label_dtype = _array_header(npz, path, key)
      if not np.issubdtype(label_dtype, np.integer):
        raise _file_error(path, key, f'has dtype {label_dtype}; expected integer labels [N, 1]')
      if len(label_shape) == 2 and label_shape[1] > 1:
        raise _file_error(
            path, key, f'has shape {list(label_shape)}: {label_shape[1]} labels per image '
            '(multi-label); expected one label per image [N, 1]')
      if label_shape not in ((shape[0], 1), (shape[0],)):
        raise _file_error(
            path, key, f'has shape {list(label_shape)}; expected [{shape[0]}, 1] (one label per '
            f'image of {prefix}_images)')
      counts[prefix] = shape[0]
  return counts


def load_split(path: str, config: MedMnistConfig, prefix: str) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, S, S, C] and labels int64 [N] in [0, num_classes) of the file's split `prefix` (train/val/test).

  Call `check_file` first (shapes are checked there); raises ValueError naming the file and key for labels out of
  range.
  """
  with np.load(path, allow_pickle=False) as npz:
    labels = np.asarray(npz[f'{prefix}_labels']).reshape(-1).astype(np.int64)
    k = len(config.class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
      raise _file_error(
          path, f'{prefix}_labels', f'has labels in [{labels.min()}, {labels.max()}]; {config.dataset} '
          f'has {k} classes, labels 0..{k - 1}')
    images = npz[f'{prefix}_images']
  if images.ndim == 3:
    images = images[..., None]
  return images, labels


class MedMnist(tfds.core.GeneratorBasedBuilder):
  """The 2D single-label MedMNIST+ datasets from their official .npz files; manual download."""

  name = 'medmnist'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [_config(name, size) for name in DATASETS for size in SIZES]
  DEFAULT_BUILDER_CONFIG_NAME = 'pneumoniamnist_64'
  code_path = epath.Path(__file__)  # as in synthetic_knee.PhantomBuilder: TFDS's derivation needs importlib_resources

  def __init__(self, *args, config=None, **kwargs):
    name = config if isinstance(config, str) else getattr(config, 'name', '') or ''
    if name.split('_')[0] in MULTI_LABEL:
      raise multi_label_error(name)
    super().__init__(*args, config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image':
                tfds.features.Image(shape=(cfg.size, cfg.size, cfg.channels), dtype=np.uint8, encoding_format='png'),
            'label':
                tfds.features.ClassLabel(names=list(cfg.class_names)),
            'id':
                tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage=HOMEPAGE,
        citation='Yang, J., Shi, R., Wei, D. et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D '
        'biomedical image classification. Sci Data 10, 41 (2023). doi: 10.1038/s41597-022-01721-8',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    try:
      folder = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # tfds: manual dir missing or empty
      default = dl_manager._manual_dir  # pylint: disable=protected-access
      raise missing_file_error(cfg.dataset, cfg.size, os.fspath(default) if default else None) from None
    path = os.path.join(folder, cfg.file_name)
    if not os.path.isfile(path):
      raise missing_file_error(cfg.dataset, cfg.size, folder)
    check_file(path, cfg)
    return {split: self._generate_examples(path, prefix) for prefix, split in SPLITS.items()}

  def _generate_examples(self, path: str, prefix: str):
    images, labels = load_split(path, self.builder_config, prefix)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label), 'id': f'{prefix}/{i:06d}'}
