"""ImageNet self-supervised ResNet-50s of the transfer studies (ERIC-T / ANTON / CHAVES).

Each is registered as ``resnet50-<method>`` with the seed studies' short alias, its upstream file
name, download URL (copied from the upstream READMEs / ssl-transfer's download script; not
verified from this machine) and checkpoint format (:mod:`pretrained.formats`). None is in the main
job: the weights are not available offline. CMC is not registered: PyContrast's CMC ResNet-50 is
two half-width networks on L and ab channels, not a torchvision ResNet-50.
"""
from __future__ import annotations

from pretrained.checkpoint_encoder import checkpoint_spec
from pretrained.preprocessing import Preprocessing
from pretrained.registry import ENCODERS
from pretrained.torchvision_zoo import IMAGENET_PREPROCESSING
from pretrained.weights_sources import WeightsSource

# SimCLR-v1 was trained on [0, 1] input without mean/std (simclr-converter eval.py; ANTON --no-norm).
SIMCLR_PREPROCESSING = Preprocessing(input_size=224, resize_size=224, interpolation="bicubic", mean=None, std=None)

FB_NC = "CC-BY-NC-4.0 (facebookresearch code and weights; non-commercial)"
PYCONTRAST = "BSD-2-Clause (HobbitLong/PyContrast code; no separate weights licence stated)"
FAIR_DL = "https://dl.fbaipublicfiles.com"
PYCONTRAST_DROPBOX = "https://www.dropbox.com/sh/87d24jqsl6ra7t2"

BYOL_SOURCES = (
    WeightsSource("pretrain_res50x1.pth.tar", "byol-converted",
                  how_to_get="convert DeepMind's pretrain_res50x1.pkl with chigur/byol-convert "
                             "(python convert.py pretrain_res50x1.pkl pretrain_res50x1.pth.tar), or put the .pkl "
                             "itself in the weights folder and pass --trust-checkpoint"),
    WeightsSource("pretrain_res50x1.pkl", "byol-haiku",
                  url="https://storage.googleapis.com/deepmind-byol/checkpoints/pretrain_res50x1.pkl",
                  how_to_get="DeepMind's haiku pickle; read only with --trust-checkpoint (converted in memory)"),
)

_ENTRIES = (
    # name, aliases, sources, preprocessing, licence, description, citation
    ("resnet50-moco-v2", ("moco", "moco-v2"),
     (WeightsSource("moco_v2_800ep_pretrain.pth.tar", "moco-v2",
                    f"{FAIR_DL}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"),),
     IMAGENET_PREPROCESSING, FB_NC, "MoCo v2, 800 epochs (facebookresearch/moco)", "Chen et al. 2020, arXiv:2003.04297"),
    ("resnet50-moco-v1", ("moco-v1",),
     (WeightsSource("moco_v1_200ep_pretrain.pth.tar", "moco-v1",
                    f"{FAIR_DL}/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar"),),
     IMAGENET_PREPROCESSING, FB_NC, "MoCo v1, 200 epochs (facebookresearch/moco)", "He et al. CVPR 2020"),
    ("resnet50-simclr-v1", ("simclr", "simclr-v1"),
     (WeightsSource("resnet50-1x.pth", "simclr-v1-converted",
                    how_to_get="download ResNet50_1x.zip from google-research/simclr "
                               "(https://storage.cloud.google.com/simclr-gcs/checkpoints/ResNet50_1x.zip) and convert "
                               "with tonylins/simclr-converter: python convert.py ResNet50_1x/model.ckpt-225206 "
                               "resnet50-1x.pth (needs TensorFlow)"),),
     SIMCLR_PREPROCESSING, "Apache-2.0 (google-research/simclr)",
     "SimCLR v1 (1x), TF weights converted to torchvision; [0, 1] input, no mean/std", "Chen et al. ICML 2020"),
    ("resnet50-swav", ("swav",),
     (WeightsSource("swav_800ep_pretrain.pth.tar", "swav", f"{FAIR_DL}/deepcluster/swav_800ep_pretrain.pth.tar"),),
     IMAGENET_PREPROCESSING, FB_NC, "SwAV, 800 epochs, multi-crop (facebookresearch/swav)", "Caron et al. NeurIPS 2020"),
    ("resnet50-deepcluster-v2", ("deepcluster-v2",),
     (WeightsSource("deepclusterv2_800ep_pretrain.pth.tar", "swav-multi-prototypes",
                    f"{FAIR_DL}/deepcluster/deepclusterv2_800ep_pretrain.pth.tar"),),
     IMAGENET_PREPROCESSING, FB_NC, "DeepCluster-v2, 800 epochs (facebookresearch/swav)", "Caron et al. NeurIPS 2020"),
    ("resnet50-sela-v2", ("sela-v2",),
     (WeightsSource("selav2_400ep_pretrain.pth.tar", "swav-multi-prototypes",
                    f"{FAIR_DL}/deepcluster/selav2_400ep_pretrain.pth.tar"),),
     IMAGENET_PREPROCESSING, FB_NC, "SeLa-v2, 400 epochs (facebookresearch/swav)", "Caron et al. NeurIPS 2020"),
    ("resnet50-byol", ("byol",), BYOL_SOURCES, IMAGENET_PREPROCESSING,
     "Apache-2.0 (deepmind-research/byol code; checkpoint terms per the BYOL README, unverified)",
     "BYOL, ResNet-50 (1x), online network", "Grill et al. NeurIPS 2020"),
    ("resnet50-infomin", ("infomin",),
     (WeightsSource("InfoMin_800.pth", "pycontrast-jigsaw",
                    f"{PYCONTRAST_DROPBOX}/AAAzMTynP3Qc8mIE4XWkgILUa/InfoMin_800.pth?dl=1"),),
     IMAGENET_PREPROCESSING, PYCONTRAST, "InfoMin Aug, 800 epochs (HobbitLong/PyContrast)", "Tian et al. NeurIPS 2020"),
    ("resnet50-pirl", ("pirl",),
     (WeightsSource("PIRL.pth", "pycontrast-jigsaw", f"{PYCONTRAST_DROPBOX}/AADN4jKnvTI0U5oT6hTmQZz8a/PIRL.pth?dl=1"),),
     IMAGENET_PREPROCESSING, PYCONTRAST, "PIRL, 200 epochs, PyContrast re-implementation",
     "Misra & van der Maaten CVPR 2020"),
    ("resnet50-insdis", ("insdis",),
     (WeightsSource("InsDis.pth", "pycontrast", f"{PYCONTRAST_DROPBOX}/AACcsSIt1_Njv7GsmsuzZ6Sta/InsDis.pth?dl=1"),),
     IMAGENET_PREPROCESSING, PYCONTRAST, "Instance discrimination, 200 epochs, PyContrast re-implementation",
     "Wu et al. CVPR 2018"),
    ("resnet50-pcl-v1", ("pcl-v1",),
     (WeightsSource("PCL_v1_epoch200.pth.tar", "pcl",
                    "https://storage.googleapis.com/sfr-pcl-data-research/PCL_checkpoint/PCL_v1_epoch200.pth.tar"),),
     IMAGENET_PREPROCESSING, "MIT (salesforce/PCL)", "PCL v1, 200 epochs (salesforce/PCL)", "Li et al. ICLR 2021"),
    ("resnet50-pcl-v2", ("pcl-v2",),
     (WeightsSource("PCL_v2_epoch200.pth.tar", "pcl",
                    "https://storage.googleapis.com/sfr-pcl-data-research/PCL_checkpoint/PCL_v2_epoch200.pth.tar"),),
     IMAGENET_PREPROCESSING, "MIT (salesforce/PCL)", "PCL v2, 200 epochs (salesforce/PCL)", "Li et al. ICLR 2021"),
)

for _name, _aliases, _sources, _prep, _licence, _description, _citation in _ENTRIES:
    ENCODERS.add(_name, checkpoint_spec(
        _name, "resnet50", 2048, _sources, _prep, kind="imagenet-ssl", description=_description,
        licence=_licence, aliases=_aliases, citation=_citation))
