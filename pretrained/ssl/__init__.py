"""In-domain contrastive pretraining (SimCLR, SupCon) of any registered encoder.

:mod:`losses` (NT-Xent, SupCon), :mod:`augment` (batched SimCLR views), :mod:`data` (decoded
images, epoch batch plans), :mod:`model` (projection head), :mod:`distributed` (torchrun/DDP),
:mod:`trainer` (the resumable loop), :mod:`pipeline` (dataset -> registered encoder) and
:mod:`recipes` (built-in recipes such as the main job's ``resnet18-simclr-synthderm``).
"""
