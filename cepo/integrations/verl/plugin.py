"""verl plugin: lets verl 0.9.1 build actor models when trl 1.x is installed beside it.

Registered as the ``verl.plugins`` entry point ``cepo`` (``pyproject.toml``); verl loads every such entry point
when it is imported, in the driver and in each Ray worker.

verl 0.9.1 treats any importable ``trl`` as the one it was built with (``trl==0.27.0``, its ``fsdp`` extra): if
``trl`` can be imported, ``apply_monkey_patch`` (run on every model the FSDP engine builds) imports
``AutoModelForCausalLMWithValueHead`` from it, which trl 1.x no longer has, and the actor fails with ImportError.
cepo's ``trl`` extra installs trl 1.16. This plugin makes verl's ``is_trl_available`` report whether that class
can be imported, so actor models build; a value model (a critic, which no cepo method uses) still gets verl's
own "please install trl" error. Nothing else in verl asks ``is_trl_available``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings

VALUE_HEAD = "AutoModelForCausalLMWithValueHead"
"""The trl class verl 0.9.1 imports when ``is_trl_available()`` is true."""


@functools.cache
def trl_has_value_head() -> bool:
    """Whether ``AutoModelForCausalLMWithValueHead`` imports from trl where verl looks for it (trl is imported lazily,
    on the first call)."""
    if importlib.util.find_spec("trl") is None:
        return False
    for name in ("trl.experimental.ppo", "trl"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, VALUE_HEAD):
            return True
    return False


def install() -> None:
    """Point verl's ``is_trl_available`` at :func:`trl_has_value_head`.

    Must run before ``verl.models.transformers.monkey_patch`` and ``verl.utils.model`` are imported (they bind the
    name on import); ``import verl`` loads this plugin before either.
    """
    import verl.utils.import_utils as import_utils

    import_utils.is_trl_available = trl_has_value_head


install()
