"""Command-line tools of pannuke-imagemask: export, verify, push, infos."""

__version__ = "1.3.0"
