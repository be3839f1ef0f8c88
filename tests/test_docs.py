"""The documentation holds: its links resolve, it speaks of the product only, and the shell
blocks marked runnable are real commands.

A block is runnable when the line right before its ```sh (or ```bash) fence is
``<!-- runnable -->``. Such a block must parse with ``bash -n``, and each command in it must
exist as written: make targets in the Makefile, ``python -m scoring`` subcommands with flags
their argparse parser accepts, bench scripts with their flags, DAG ids and Param names for
``airflow``, containers and Param names for ``az storage blob upload --metadata``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from scoring.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w-]*)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "((", "))", ";;"}
SHELL_BUILTINS = {"export", "cd"}


def documents(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line.lstrip())
        if match and (fence is None or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)):
            fence = None if fence else match.group(1)
            continue
        if fence is None:
            yield number, re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), line)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its text lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every #fragment that lands somewhere in a Markdown file (repeated headings get -1, -2...)."""
    text = path.read_text()
    found: set[str] = set()
    seen: dict[str, int] = {}
    fence = None
    for line in text.splitlines():
        match = FENCE.match(line.lstrip())
        if match and (fence is None or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)):
            fence = None if fence else match.group(1)
            continue
        if fence is None and (heading := HEADING.match(line)):
            slug = github_anchor(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def broken_links(path: Path) -> list[str]:
    """Relative links and #anchors in a Markdown file that lead nowhere, as 'file:line: target'."""
    broken = []
    for number, line in prose_lines(path.read_text()):
        targets = LINK.findall(line) + [m.group(1) for m in [REFERENCE.match(line)] if m]
        for target in targets:
            if SCHEME.match(target) or target.startswith("//"):
                continue  # a web address: not ours to check offline
            file_part, _, fragment = target.partition("#")
            where = (path.parent / file_part).resolve() if file_part else path
            problem = None
            if not where.exists():
                problem = "no such file"
            elif fragment and where.suffix != ".md":
                problem = "an anchor into a file that is not Markdown"
            elif fragment and fragment not in anchors(where):
                problem = f"no heading with anchor #{fragment} in {where.name}"
            if problem:
                broken.append(f"{path.name}:{number}: {target} ({problem})")
    return broken


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every shell block marked runnable; a marker before anything
    else is an error in the document."""
    lines = path.read_text().splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        assert fence and fence.group(2) in ("sh", "bash", "shell"), \
            f"{path.name}:{index + 1}: {MARKER} must be followed by a ```sh block"
        end = next(i for i in range(index + 2, len(lines)) if lines[i].strip().startswith(fence.group(1)))
        blocks.append((index + 3, "\n".join(lines[index + 2:end]) + "\n"))
    return blocks


def commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block, as words (assignments before a command dropped)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in OPERATORS:
                while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
                    words.pop(0)
                if words:
                    found.append(words)
                words = []
            else:
                words.append(token)
    return found


# --------------------------------------------------------------------------- what commands may call


def make_targets(repo: Path = REPO) -> set[str]:
    targets = set()
    for line in (repo / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/-]+(?:[ \t]+[A-Za-z0-9_.$()/-]+)*)[ \t]*:(?![=:])", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def dag_ids(repo: Path = REPO) -> set[str]:
    return {m for path in (repo / "dags").glob("*.py") for m in re.findall(r"dag_id=\"([^\"]+)\"", path.read_text())}


def param_names(repo: Path = REPO) -> set[str]:
    """The names of the Airflow Params the DAGs declare (``"name": Param(...)``)."""
    names = set()
    for path in [*(repo / "dags").glob("*.py"), *(repo / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if (isinstance(key, ast.Constant) and isinstance(value, ast.Call)
                            and getattr(value.func, "id", getattr(value.func, "attr", None)) == "Param"):
                        names.add(key.value)
    return names


def containers(repo: Path = REPO) -> set[str]:
    """Container names the storage module knows (string constants in plugins/storage/blobs.py)."""
    tree = ast.parse((repo / "plugins" / "storage" / "blobs.py").read_text())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and re.fullmatch(r"[a-z0-9-]{3,63}", n.value)}


def check_scoring(args: list[str]) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            if exc.code:
                raise AssertionError(f"python -m scoring {' '.join(args)}: {stderr.getvalue().strip()}") from None


def check_python(args: list[str], repo: Path) -> None:
    if args[:2] == ["-m", "scoring"]:
        return check_scoring(args[2:])
    if args[:1] == ["-m"]:
        assert (repo / args[1]).is_dir() or (repo / f"{args[1]}.py").is_file(), f"no module {args[1]} here"
        return None
    if args[:1] == ["-c"]:
        compile(args[1], "<python -c>", "exec")
        return None
    script = repo / args[0]
    assert script.is_file(), f"no script {args[0]}"
    source = script.read_text()
    for flag in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
        assert f'"{flag}"' in source, f"{args[0]} has no option {flag}"
    return None


def check_airflow(args: list[str], repo: Path) -> None:
    if args[:2] == ["dags", "trigger"]:
        assert args[2] in dag_ids(repo), f"no DAG {args[2]}"
        for option, value in zip(args, args[1:]):
            if option in ("-c", "--conf"):
                unknown = set(json.loads(value)) - param_names(repo)
                assert not unknown, f"conf keys that are not Params: {sorted(unknown)}"
    elif args[:2] == ["backfill", "create"]:
        dag = args[args.index("--dag-id") + 1]
        assert dag in dag_ids(repo), "backfill of a DAG that does not exist"
        # a live deployment's schedule has swept every past hour: without it, nothing is reprocessed
        assert dag != "blob_sweep" or "--reprocess-behavior" in args, "a sweep backfill without --reprocess-behavior"
        if "--dag-run-conf" in args:
            unknown = set(json.loads(args[args.index("--dag-run-conf") + 1])) - param_names(repo)
            assert not unknown, f"conf keys that are not Params: {sorted(unknown)}"
    else:
        raise AssertionError(f"airflow {' '.join(args[:2])}: teach tests/test_docs.py what it needs")


def check_az(args: list[str], repo: Path) -> None:
    assert args[:3] == ["storage", "blob", "upload"], f"az {' '.join(args[:3])}: teach tests/test_docs.py"
    container = args[args.index("--container-name") + 1]
    assert container in containers(repo), f"no container {container}"
    if "--metadata" in args:
        pairs = []
        for word in args[args.index("--metadata") + 1:]:
            if word.startswith("--"):
                break
            pairs.append(word.split("=")[0])
        unknown = set(pairs) - param_names(repo)
        assert not unknown, f"metadata keys that are not Params: {sorted(unknown)}"


def check_command(words: list[str], repo: Path = REPO) -> None:
    program, args = words[0], words[1:]
    if program == "make":
        missing = {a for a in args if not a.startswith("-") and "=" not in a} - make_targets(repo)
        assert not missing, f"make targets not in the Makefile: {sorted(missing)}"
    elif program in ("python", "python3") or program.endswith("/bin/python"):
        check_python(args, repo)
    elif program == "mpiexec":
        while args and args[0].startswith("-"):
            args = args[2:] if args[0] in ("-n", "-np") else args[1:]
        check_command(args, repo)
    elif program == "airflow" or program.endswith("/bin/airflow"):
        check_airflow(args, repo)
    elif program == "az":
        check_az(args, repo)
    else:
        assert program in SHELL_BUILTINS, f"{program}: teach tests/test_docs.py how to check it"


def command_problems(path: Path, repo: Path = REPO) -> list[str]:
    problems = []
    for line, block in runnable_blocks(path):
        parsed = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        if parsed.returncode:
            problems.append(f"{path.name}:{line}: bash -n: {parsed.stderr.strip()}")
        for words in commands(block):
            try:
                check_command(words, repo)
            except (AssertionError, ValueError, SyntaxError, IndexError) as exc:
                problems.append(f"{path.name}:{line}: {' '.join(words)[:80]}: {exc}")
    return problems


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(path):
    broken = broken_links(path)
    assert not broken, "\n".join(broken)


CODE_LINK = re.compile(r"\b(docs/[\w.-]+\.md)#([\w-]+)")


def code_links(repo: Path = REPO) -> list[str]:
    """``docs/<page>.md#<anchor>`` written in the code (comments, docstrings, messages) that
    leads nowhere, as 'path:line: target'; this file's own examples aside."""
    broken = []
    for folder in ("plugins", "dags", "scoring", "devstack", "bench", "docker", "tests"):
        for path in sorted((repo / folder).rglob("*.py")):
            if path.name == "test_docs.py":
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for page, fragment in CODE_LINK.findall(line):
                    where = repo / page
                    if not where.exists() or fragment not in anchors(where):
                        broken.append(f"{path.relative_to(repo)}:{number}: {page}#{fragment}")
    return broken


def test_links_from_the_code_into_the_docs_resolve():
    broken = code_links()
    assert not broken, "\n".join(broken)


def test_docs_speak_of_the_product_only():
    """Like ``grep -ri session README.md docs/``: the work's diary stays out of the docs."""
    hits = [str(path.relative_to(REPO)) for path in [REPO / "README.md", *(REPO / "docs").rglob("*")]
            if path.is_file() and b"session" in path.read_bytes().lower()]
    assert hits == []


def test_readme_shows_the_two_commands_first_and_is_short():
    text = (REPO / "README.md").read_text()
    first = runnable_blocks(REPO / "README.md")[0][1]
    assert [w[:2] for w in commands(first)] == [["make", "demo"], ["make", "test"]]
    assert len(text.splitlines()) < 150


@pytest.mark.parametrize("path", [p for p in documents() if runnable_blocks(p)], ids=lambda p: p.name)
def test_runnable_blocks_parse_and_call_what_exists(path):
    problems = command_problems(path)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_broken_links_and_commands(tmp_path):
    """The checks above can fail: a broken link, a missing anchor, an unknown flag, target,
    Param or DAG, and a block bash cannot parse are all reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Two words\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\n[ok](docs/a.md#two-words) [ok](#title) `[in code](nowhere.md)`\n"
        "[gone](docs/b.md) [no anchor](docs/a.md#three-words) [self](#nothing)\n\n"
        f"{MARKER}\n```sh\nmake demo\nmake nothing\n"
        "python -m scoring stylize in.mp4 out.mp4 --colour red\n"
        "airflow dags trigger video_style_transfer -c '{\"input_blob\": \"a.mp4\", \"styel\": \"7\"}'\n"
        "airflow dags trigger no_such_dag\n"
        "az storage blob upload --container-name videos-in --name a.mp4 --metadata stlye=7\n"
        "rm -rf /\n"
        "```\n\n"
        f"{MARKER}\n```sh\nif then fi (\n```\n")
    for name in ("Makefile", "dags", "plugins"):
        (tmp_path / name).symlink_to(REPO / name)

    assert broken_links(readme) == [
        "README.md:4: docs/b.md (no such file)",
        "README.md:4: docs/a.md#three-words (no heading with anchor #three-words in a.md)",
        "README.md:4: #nothing (no heading with anchor #nothing in README.md)",
    ]
    problems = "\n".join(command_problems(readme, tmp_path))
    for expected in ("make targets not in the Makefile: ['nothing']", "unrecognized arguments: --colour red",
                     "conf keys that are not Params: ['styel']", "no DAG no_such_dag",
                     "metadata keys that are not Params: ['stlye']", "rm: teach", "bash -n: "):
        assert expected in problems
    assert "make demo:" not in problems


def test_github_anchors():
    assert github_anchor("Steadier video: cost and gain") == "steadier-video-cost-and-gain"
    assert github_anchor("`blob_watcher`") == "blob_watcher"
    assert github_anchor("The demo, end to end") == "the-demo-end-to-end"
    assert github_anchor("Bad input through the DAG") == "bad-input-through-the-dag"
