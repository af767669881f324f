"""Settings and client factories shared by flows, tasks and the CLI."""
