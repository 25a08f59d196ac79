"""Train the LLM forecaster of a recipe, on one process or many (``st_instruct.train`` as a file).

    accelerate launch [--config_file recipes/accelerate/zero2.yaml] scripts/sft.py recipes/stlink_sft.yaml [--k v]
        [--overwrite]

The same as ``python -m st_instruct.train`` / ``accelerate launch -m st_instruct.train``, which also run from an
installed package (``st-instruct train RECIPE --num_processes N --accelerate_config zero2`` launches it); see that
module.
"""

from __future__ import annotations

import sys

from st_instruct.train import main

if __name__ == "__main__":
    sys.exit(main(prog="scripts/sft.py"))
