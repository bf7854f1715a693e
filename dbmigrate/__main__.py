"""``python -m dbmigrate`` runs the CLI."""

from dbmigrate.cli import main

main()
