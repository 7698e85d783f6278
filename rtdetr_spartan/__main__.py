"""``python -m rtdetr_spartan SUBCOMMAND ...`` (also under ``torchrun -m rtdetr_spartan``)."""

from rtdetr_spartan.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
