"""``python -m megapairs``: the same as the ``megapairs`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="megapairs")
