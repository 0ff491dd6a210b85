"""``glmdeploy completion bash|zsh|fish``: print the script that hooks glmdeploy into the shell."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import handles_errors
from glmdeploy.completion import SHELLS


@handles_errors
def completion(
    shell: Annotated[str, typer.Argument(metavar="bash|zsh|fish", help="The shell to print the script for.")],
) -> None:
    """Print the shell completion script (commands, options, profile and deployment names).

    bash: eval "$(glmdeploy completion bash)" in ~/.bashrc; zsh: the same with zsh in ~/.zshrc;
    fish: glmdeploy completion fish > ~/.config/fish/completions/glmdeploy.fish
    """
    from glmdeploy.completion import script
    from glmdeploy.errors import UsageError

    if shell not in SHELLS:
        raise UsageError(f"unsupported shell {shell!r}: choose one of {', '.join(SHELLS)}")
    print(script(shell))
