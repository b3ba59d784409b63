"""The `mbrl` subcommands, one module each: `add_parser(sub)` adds its options, `run(args)` does its work.

`mbrl.cli` builds the command line from them (COMMANDS) and dispatches; `options` holds what several share.
Each module imports only argparse-level code at the top, so `mbrl --help` stays fast; the work (torch, SB3,
gymnasium) is imported by `run` and by the options that read a registry.
"""
