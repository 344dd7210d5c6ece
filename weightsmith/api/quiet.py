"""Import-time chatter of the libraries weightsmith uses (torchao's optional kernels, torch's pytree
deprecations, diffusers' torchao note) silenced, so that a verb prints nothing a caller did not ask for."""

from __future__ import annotations

import logging

NOISY = (
    "torchao",
    "torch.utils._pytree",
    "torchao.kernel.intmm",
    "diffusers.quantizers.torchao.torchao_quantizer",  # "Unable to import `torchao` Tensor objects"
)


def quiet_libraries() -> None:
    """Raise the named loggers to ERROR unless the caller already set their level."""
    for name in NOISY:
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.ERROR)
