"""The command groups of the `modelworks` CLI; `modelworks/cli.py` assembles them."""
