"""Shell completion (bash, zsh, fish): what a TAB after ``--profile`` or a NAME argument offers.

Runs on every TAB press, so it must stay as cheap as ``--help``: stdlib only. Profile names come
from the profile directories' file names (``profile_files``), deployment names straight from the
state database with ``sqlite3`` (not ``StateStore``: that loads pydantic and would migrate or create
the file). Anything unusable (no state dir, a locked or foreign database) means no suggestions,
never an error: a traceback in the middle of a command line helps no one.
"""

from __future__ import annotations

import contextlib
import os

# Click's variable for the completion instruction of a program called "glmdeploy".
COMPLETE_VAR = "_GLMDEPLOY_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


def profile_names(incomplete: str) -> list[str]:
    from glmdeploy.profile_files import profile_files

    try:
        names = sorted(profile_files())
    except OSError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def deployment_names(incomplete: str) -> list[str]:
    """Names of the active deployments (the ones a NAME argument resolves to)."""
    import sqlite3

    from glmdeploy.paths import home

    path = home() / "state.db"  # glmdeploy.state.DB_FILENAME; importing it would load pydantic
    if not path.is_file():
        return []
    try:
        # Read-only and never created: completing must not leave a database behind or take a write lock.
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.2)
    except sqlite3.Error:
        return []
    with contextlib.closing(conn):
        try:
            rows = conn.execute(
                "SELECT name FROM deployments WHERE destroyed_at IS NULL AND status != 'destroyed' "
                "AND parent_id IS NULL ORDER BY created_at"
            ).fetchall()
        except sqlite3.Error:
            return []
    return [str(name) for (name,) in rows if str(name).startswith(incomplete)]


def enable_if_requested() -> None:
    """Register Typer's shell classes when the shell asks for completions.

    Typer registers them only with ``add_completion=True``, which also adds ``--install-completion``
    and ``--show-completion`` to every ``--help``; ``glmdeploy completion SHELL`` replaces those.
    """
    if os.environ.get(COMPLETE_VAR):
        import typer.core
        from typer._completion_classes import completion_init

        completion_init()
        # To find the parameter under the cursor Click parses the words typed so far, and Typer converts
        # every parsed value through a pydantic TypeAdapter: about 0.1 s of imports per TAB press for values
        # that completion never uses (our suggestions depend on the incomplete word only). In this process,
        # which only completes and exits, values stay as the shell typed them and no callback runs.
        typer.core._TyperParameter.process_value = _keep_as_typed  # type: ignore[method-assign]


def _keep_as_typed(self: object, ctx: object, value: object) -> object:
    return value


def script(shell: str) -> str:
    """The script that hooks ``glmdeploy`` into ``shell``'s completion."""
    from typer._completion_classes import completion_init
    from typer._completion_shared import get_completion_script

    completion_init()
    return get_completion_script(prog_name="glmdeploy", complete_var=COMPLETE_VAR, shell=shell)
