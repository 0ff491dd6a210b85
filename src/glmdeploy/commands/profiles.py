"""``glmdeploy profiles list|show|validate|schema``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glmdeploy.commands._common import JsonOutput, emit_json, handles_errors, say
from glmdeploy.completion import profile_names
from glmdeploy.tables_options import WideOutput

app = typer.Typer(help="Hardware profiles: the known-good recipes.", no_args_is_help=True)


@app.command("list")
@handles_errors
def list_profiles(json_output: JsonOutput = False, output: WideOutput = None) -> None:
    """List every known profile (shipped ones and those in $GLMDEPLOY_HOME/profiles)."""
    from glmdeploy.profiles import load_all
    from glmdeploy.views import profile_summary

    rows = [profile_summary(p) for p in load_all()]
    if json_output:
        emit_json(rows)
        return
    from glmdeploy.tables import Column, print_table

    columns = [
        Column("name", 9, key=True),
        Column("engine", 8),
        Column("gpus", 7),
        Column("tools", 6),
        Column("reasoning", 6),
        Column("context", 5, justify="right"),
        Column("model", 3),
        Column("source", 1),
    ]
    table = [
        [
            r["name"],
            r["engine"],
            f"{r['num_gpus']}x {' / '.join(r['gpu_names'])}",
            "yes" if r["tools"] else "no",
            "yes" if r["reasoning"] else "no",
            f"{r['context_length']:,}" if r["context_length"] else "model max",
            r["model"],
            r["source"],
        ]
        for r in rows
    ]
    print_table(columns, table, wide=output == "wide")


@app.command("show")
@handles_errors
def show(
    ref: Annotated[
        str, typer.Argument(metavar="NAME|PATH", help="Profile name or path.", autocompletion=profile_names)
    ],
    json_output: JsonOutput = False,
) -> None:
    """Show a profile: hardware, the exact launch command, environment and warnings."""
    from glmdeploy.profiles import load_profile
    from glmdeploy.views import profile_detail

    profile = load_profile(ref)
    detail = profile_detail(profile)
    if json_output:
        emit_json(detail)
        return
    hw = profile.hardware
    lines = [
        f"{profile.name}: {profile.description}",
        f"source:   {profile.source.seed} ({profile.source.takes})",
        f"model:    {profile.model.repo} ({profile.model.quant}, {profile.model.weights_gb:g} GB)"
        + (f" served as {profile.model.served_name}" if profile.model.served_name else ""),
        f"hardware: {hw.num_gpus}x {' / '.join(hw.gpu_names)}, >= {hw.min_vram_gb:g} GB each, "
        f"disk {hw.disk_gb} GB, <= ${hw.max_price:.2f}/h",
        f"image:    {profile.engine.image}",
        f"engine:   {detail['engine_check']['engine']}"
        + ("" if detail["engine_check"]["problems"] else ", every flag of the command accepted"),
        "command:",
        f"  {detail['launch_command']}",
    ]
    if profile.env:
        lines.append("env:")
        lines += [f"  {k}={v}" for k, v in profile.env.items()]
    lines.append(f"ready:    within {profile.readiness.timeout}")
    for w in [*detail["engine_check"]["problems"], *profile.warnings]:
        lines.append(f"warning:  {w}")
    print("\n".join(lines))


@app.command("validate")
@handles_errors
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Profile YAML files to check.")],
) -> None:
    """Check profile files against the schema and their launch command against the pinned engine's flags;
    exit 2 if any is invalid."""
    from glmdeploy.engines.checks import check_launch
    from glmdeploy.errors import ProfileError
    from glmdeploy.profiles import load_file

    failed: list[str] = []
    for path in paths:
        try:
            profile = load_file(path)
        except ProfileError as exc:
            failed.append(str(exc))
            say(f"invalid: {exc}")
            continue
        check = check_launch(profile)
        if check.flags_refusal:
            failed.append(check.flags_refusal)
            say(f"invalid: {path}: {check.flags_refusal}")
            continue
        for warning in (check.model_refusal, check.version_warning):
            if warning:
                say(f"warning: {path}: {warning}")
        say(f"ok: {path} ({profile.name})")
    if failed:
        raise typer.Exit(2)


@app.command("schema")
@handles_errors
def schema() -> None:
    """Print the JSON Schema of the profile format (for editor validation)."""
    import json

    from glmdeploy.profiles.model import Profile

    doc = Profile.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "glmdeploy hardware profile"
    print(json.dumps(doc, indent=2))
