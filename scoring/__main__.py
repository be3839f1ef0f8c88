import gc
import sys

from .launch import restart_with_huge_pages

restart_with_huge_pages()

from .cli import main  # noqa: E402  (after the restart: nothing is loaded twice)

code = main()
gc.freeze()  # the interpreter's collections at exit would walk torch's objects once more, for nothing
sys.exit(code)
