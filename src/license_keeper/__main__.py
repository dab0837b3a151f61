"""The `license-keeper` command (and `python -m license_keeper`)."""

import gc


def main() -> None:
    # Start-up builds about 100,000 objects that live as long as the process (modules, classes,
    # compiled patterns). The cyclic collector walking them over and over while they are imported
    # costs about a fifth of the time to ready, so it is off until the command has loaded what it
    # needs; cli.common.started() then freezes those objects out of its way and turns it back on.
    gc.disable()
    from .cli import main as cli

    cli()


if __name__ == "__main__":
    main()
