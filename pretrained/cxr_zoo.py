"""Chest X-ray self-supervised encoders: MoCo-CXR (ResNet-18, DenseNet-121) and MIMIC-CheXpert.

- MoCo-CXR (stanfordmlgroup/MoCo-CXR, lr 1e-4, ``r8w-00001.pth.tar`` / ``d1w-00001.pth.tar``):
  MoCo layout with ``module.encoder_q.*``, ``module.encoder_k.*`` and the queue. Pretrained with
  ``--aug-setting chexpert``: images converted to RGB from grey, CXR mean 0.5020 / std 0.085585
  (``aihc_utils/image_transform.py``); so the encoder's preprocessing is grey -> RGB + CXR stats
  (ANTON fed ImageNet-normalised input instead; see docs/encoders.md).
- MIMIC-CheXpert (facebookresearch/CovidPrognosis, MoCo on MIMIC-CXR + CheXpert, lr 0.01 / 0.1 /
  1.0): Lightning checkpoints, ``state_dict`` keys ``model.encoder_q.*``. Input: grey, then
  ``HistogramNormalize`` (per-image histogram equalisation, output 0..255, not 0..1), then
  grey -> RGB (``train_sip.py``).
"""
from __future__ import annotations

from pretrained.checkpoint_encoder import checkpoint_spec
from pretrained.preprocessing import CXR_MEAN, CXR_STD, Preprocessing
from pretrained.registry import ENCODERS
from pretrained.weights_sources import WeightsSource

MOCO_CXR_PREPROCESSING = Preprocessing(input_size=224, resize_size=224, interpolation="bicubic",
                                       mean=CXR_MEAN, std=CXR_STD, grayscale=True)
MIMIC_CHEXPERT_PREPROCESSING = Preprocessing(input_size=224, resize_size=224, interpolation="bicubic",
                                             mean=None, std=None, grayscale=True, histogram_normalize=True)

MOCO_CXR_LICENCE = ("no licence file in stanfordmlgroup/MoCo-CXR (unverified); weights trained on CheXpert, "
                    "subject to the CheXpert research use agreement")
MIMIC_LICENCE = ("MIT (facebookresearch/CovidPrognosis code); models for research use only per the upstream "
                 "disclaimer; trained on MIMIC-CXR-JPG and CheXpert, subject to their data use agreements")
MOCO_CXR_URL = "https://storage.googleapis.com/moco-cxr"
COVID_PROGNOSIS_URL = "https://dl.fbaipublicfiles.com/CovidPrognosis/pretrained_models"
MIMIC_LRS = ("0.01", "0.1", "1.0")

ENCODERS.add("resnet18-moco-cxr", checkpoint_spec(
    "resnet18-moco-cxr", "resnet18", 512,
    (WeightsSource("r8w-00001.pth.tar", "moco-cxr-resnet", f"{MOCO_CXR_URL}/r8w-00001.pth.tar"),),
    MOCO_CXR_PREPROCESSING, kind="medical", licence=MOCO_CXR_LICENCE, aliases=("moco-cxr-r18", "mocov2-cxr-r18"),
    description="MoCo-CXR ResNet-18 (ImageNet init, MoCo v2 on CheXpert, lr 1e-4); CXR mean/std, grey -> RGB",
    citation="Sowrirajan et al. MIDL 2021"))
ENCODERS.add("densenet121-moco-cxr", checkpoint_spec(
    "densenet121-moco-cxr", "densenet121", 1024,
    (WeightsSource("d1w-00001.pth.tar", "moco-cxr-densenet", f"{MOCO_CXR_URL}/d1w-00001.pth.tar"),),
    MOCO_CXR_PREPROCESSING, kind="medical", licence=MOCO_CXR_LICENCE, aliases=("moco-cxr", "moco-cxr-d121"),
    description="MoCo-CXR DenseNet-121 (ImageNet init, MoCo on CheXpert, lr 1e-4); CXR mean/std, grey -> RGB",
    citation="Sowrirajan et al. MIDL 2021"))

for _lr in MIMIC_LRS:
    _file = f"mimic-chexpert_lr_{_lr}_bs_128_fd_128_qs_65536.pt"
    ENCODERS.add(f"densenet121-mimic-chexpert-lr{_lr}", checkpoint_spec(
        f"densenet121-mimic-chexpert-lr{_lr}", "densenet121", 1024,
        (WeightsSource(_file, "mimic-chexpert", f"{COVID_PROGNOSIS_URL}/{_file}"),),
        MIMIC_CHEXPERT_PREPROCESSING, kind="medical", licence=MIMIC_LICENCE,
        aliases=(f"mimic-chexpert-lr{_lr}", f"mimic-chexpert_lr_{_lr}"),
        description=f"MIMIC-CheXpert DenseNet-121 (MoCo, lr {_lr}, batch 128, 128-d, queue 65536); "
                    f"histogram normalisation 0..255, grey -> RGB",
        citation="Sriram et al. 2021, arXiv:2101.04909"))
