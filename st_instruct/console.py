"""What a run prints besides its own output: library noise dropped at its source, library progress bars off.

:func:`drop_library_noise` runs when the package is imported (``st_instruct/__init__.py``), before any of our code
imports peft (which imports bitsandbytes) or builds a trainer (where accelerate imports DeepSpeed). It drops exactly
three messages, each at the logger or warning that emits it, and nothing else:

- DeepSpeed's ``Setting accelerator to CPU ...`` (its ``DeepSpeed`` logger, on stdout), logged when accelerate
  imports DeepSpeed inside every ``Trainer`` on a machine without CUDA -- expected here, never actionable;
- bitsandbytes' ``Failed to load CPU gemm_4bit_forward from kernels-community ...`` (logger
  ``bitsandbytes.backends.cpu.ops``), logged when peft imports bitsandbytes on a CPU with AVX512-BF16: it asks to
  install ``kernels``, which downloads code from the hub at run time and is never installed (docs/design.md §8); the
  plain CPU kernel runs instead;
- transformers' ``FutureWarning: `is_gradient_checkpointing` is deprecated``, raised by peft 0.21's
  ``PeftModel.__init__`` (``getattr(model, "is_gradient_checkpointing", True)``) under transformers 5.24 for every
  LoRA model built (``get_peft_model``) or loaded (``PeftModel.from_pretrained``): no argument of ours reaches it,
  and the checkpointing it asks about is off unless the recipe turns it on.

:func:`disable_library_progress_bars` turns off the bars of transformers (``Loading weights``), huggingface_hub
and datasets (``tokenising``, ``Saving the dataset``) for a ``--quiet`` run; our own bars take ``progress=``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# (logger name, start of the message it logs) of each library message dropped
DROPPED_LOG_MESSAGES = (
    ("DeepSpeed", "Setting accelerator to CPU"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
GRADIENT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"


class _DropMessage(logging.Filter):
    """Drops the records whose unformatted message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def drop_library_noise() -> None:
    """Install the filters of the module docstring (once; calling again adds nothing). Cheap: it imports none of
    those libraries -- a logger filter installed before the library creates its logger stays on it."""
    for name, prefix in DROPPED_LOG_MESSAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_WARNING, category=FutureWarning,
                            module=r"transformers\.modeling_utils")


def disable_library_progress_bars() -> None:
    """Turn off the progress bars of transformers, huggingface_hub and datasets for the rest of the process."""
    # the libraries whose bars these are: imported when asked for, so importing the console stays instant
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # huggingface_hub's too
    datasets.disable_progress_bars()


@contextlib.contextmanager
def datasets_progress_bars(enabled: bool) -> Iterator[None]:
    """Within the block, ``datasets``' bars (``tokenising``) on or off as ``enabled``; restored afterwards (a forecast
    call tokenises a few samples and keeps its caller's console as it found it)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars  # as above

    was_disabled = are_progress_bars_disabled()
    (enable_progress_bars if enabled else disable_progress_bars)()
    try:
        yield
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()


def run_reporting_input_errors(prog: str, action: Callable[[], Any]) -> int:
    """Run ``action``; an error caused by the user's input (``ValueError``: STDataError, RecipeError, ...; ``OSError``:
    an unreadable file) is printed as one line ``PROG: error: ...`` with exit status 2, never a traceback."""
    try:
        action()
    except (ValueError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
