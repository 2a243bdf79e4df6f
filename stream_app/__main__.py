"""``python -m stream_app`` is the ``ripple`` command."""

from stream_app.cli import main

main()
