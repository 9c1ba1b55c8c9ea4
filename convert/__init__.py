"""Command-line tools of pannuke-imagemask: export, verify, push, evaluate, infos."""

__version__ = "1.4.0"
