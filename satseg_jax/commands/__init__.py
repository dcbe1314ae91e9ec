"""Per-command wiring of the ``satseg`` CLI: each module adds its subcommands
(``add_parser(subparsers)``) and holds their handlers; cli.py only assembles them.

Order here is the order of ``satseg --help``: the pipeline's.
"""

from satseg_jax.commands import baseline, catalog, data, export, mapping, maps, model, weights

MODULES = (data, catalog, model, mapping, export, baseline, maps, weights)
