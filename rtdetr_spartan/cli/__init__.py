"""Command-line tools; ``rtdetr-spartan SUBCOMMAND`` dispatches to them."""
