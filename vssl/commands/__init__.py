"""The command-line front-ends that are not Trainer methods, one module per subcommand, each
with ``main(argv) -> int`` (registered in `vssl.cli.EXTRA_COMMANDS`) and ``build_parser()``.

The library they call stays where it was: feature extraction, classifiers and fine-tuning in
`vssl.eval`. `vssl.commands.common` holds what the evaluation commands share.
"""
