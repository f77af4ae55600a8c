"""Command-line interface: ``python -m kdtalker_core {generate,batch,doctor,convert,download}``."""

from .console import main

if __name__ == "__main__":
    raise SystemExit(main())
