"""Command-line interface: ``python -m kdtalker_core {generate,doctor,convert,download}``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
