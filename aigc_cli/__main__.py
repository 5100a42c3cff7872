"""`python -m aigc_cli ...` is the same as `aigc ...` (and what torchrun launches)."""

from aigc_cli.cli.app import main

if __name__ == "__main__":
    main()
