"""st_instruct: spatio-temporal forecasting with Hugging Face LLMs and VLMs."""

__version__ = "0.1.0"

from st_instruct.console import drop_library_noise  # noqa: E402  (before any module of ours imports peft)

drop_library_noise()


def __getattr__(name: str):
    """``st_instruct.load_forecaster`` (:mod:`st_instruct.inference`), imported when first used: importing the
    package stays cheap (no torch, no transformers) for the CLI and the data tools."""
    if name in ("load_forecaster", "Forecaster", "Forecast"):
        from st_instruct import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'st_instruct' has no attribute {name!r}")
