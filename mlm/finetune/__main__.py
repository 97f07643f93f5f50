"""`python -m mlm.finetune`: the command line of `mlm.finetune.cli`."""
from mlm.errors import run_cli
from mlm.finetune.cli import main

if __name__ == "__main__":
    run_cli(main)
