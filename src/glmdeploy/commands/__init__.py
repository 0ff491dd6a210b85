"""One module per command (or command group). Each imports only typer at module level;
everything heavy is imported inside the command body, so ``glmdeploy --help`` stays fast."""
