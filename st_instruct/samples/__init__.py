"""Samples: what a model reads, built from windows of ST data -- prompts, rendered images, rationales, tokenisation
and the collators that batch them (the layer between ``st_instruct.data`` and ``st_instruct.models``)."""
