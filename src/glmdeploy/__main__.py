"""``python -m glmdeploy`` runs the CLI (used by tests and CI without relying on PATH)."""

from glmdeploy.cli import main

main()
