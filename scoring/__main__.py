import sys

from .launch import restart_with_huge_pages

restart_with_huge_pages()

from .cli import main  # noqa: E402  (after the restart: nothing is loaded twice)

sys.exit(main())
