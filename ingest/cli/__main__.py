"""``python -m ingest.cli``: the same as the ``s2ingest`` command."""
from ingest.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="s2ingest")
