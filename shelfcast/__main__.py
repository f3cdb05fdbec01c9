"""``python -m shelfcast`` runs the console script."""

from shelfcast.cli import main

main()
