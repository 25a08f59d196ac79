"""st_instruct: spatio-temporal forecasting with Hugging Face LLMs and VLMs."""

__version__ = "0.1.0"
