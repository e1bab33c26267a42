"""One module per ``cnnvis`` subcommand. Each has ``HELP`` (its line in ``cnnvis --help``),
optionally ``DESCRIPTION`` (the text of ``cnnvis <command> --help``), and ``run(args) -> int``
(the exit status); its flags are declared by ``add_<command>`` in :mod:`..parser`."""
