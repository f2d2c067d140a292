"""nvfabric: the `nvfabric` command, which gathers the subcommands of every component."""
