"""The documentation cannot drift: every fenced block of README.md and docs/ carries a docs
marker, every runnable page runs as written, and the docs site builds without a warning.

A marker is an HTML comment on the line just before the fence (or before one blank
line before it):

  <!-- docs: run -->               run by test_page_runs, in page order, in a fresh directory
                                   that looks like a clone of the repository
  <!-- docs: run needs PATH -->    the same, as soon as PATH exists there
  <!-- docs: skip REASON -->       not run here; REASON is one of SKIP_REASONS: network (a
                                   download: PyPI, presets, published checkpoints, datasets),
                                   docker, gpu, tpu, cluster (several hosts)
  <!-- docs: covered-by TARGET --> run elsewhere: TARGET is a file of this repository, or
                                   tests/FILE.py::test_function, or a page (docs/...md): then
                                   every command of the block must be one that the page runs
  <!-- docs: layout -->            a file tree, not commands: every path it names must exist

Each page runs on its own, in a new directory, with only what a fresh clone has
(scripts/, serving/, examples/ and the .venv) and what its earlier blocks made: a
page that needs a trained model trains one. Bash blocks (```bash, and plain ```
ones) run command by command (backslash continuations joined, `# ...` comments
dropped), each with `bash -c`. Python blocks run one after the other in one `python`
process per page, each as a fresh `__main__` module, so a block that uses a name it
does not define fails as it would in a new interpreter. The commands get tiny
settings from SUBSTITUTIONS, the only changes made to what the pages say. Every
command must exit with status 0, a `curl` must not answer an error, and no command
may answer "Nothing to do" (an example that does nothing teaches nothing).

The pages run once, on the TensorFlow backend (a fresh clone's default), as does the
site build; the markers are checked on every backend.
"""

import collections
import glob
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
from helpers.processes import ROOT, worker_env

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

README = "README.md"
README_MAX_LINES = 250
KINDS = ("run", "skip", "covered-by", "layout")
SKIP_REASONS = ("network", "docker", "gpu", "tpu", "cluster")
MARKER = re.compile(r"^<!--\s*docs:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
BASH_LANGS = ("bash", "sh", "shell", "")
# What a fresh clone has that the pages use (the sandbox links them; .venv is this virtualenv).
CLONE = ("scripts", "serving", "examples")
NOTHING_DONE = "Nothing to do"

TINY_TRAIN = "--epochs 1 --steps-per-epoch 2 --num-blocks 1"
TINY_BENCHMARK = ("--config 8,1,16,8,32 --image-size 16 --backends tensorflow --modes inference "
                  "--no-peers --warmup 0 --repeats 1")

Rule = collections.namedtuple("Rule", "pattern action text why")
# The substitution table, applied in this order to every command a `run` block holds.
# action: "replace" (pattern -> text), "append" (text added at the end of a matching command),
# "background" (the command starts in the background; the blocks after it talk to it).
# {grpc} and {rest} are the ports that the backgrounded `keras-mixer serve` listens on.
SUBSTITUTIONS = (
    Rule(r"^bash scripts/bootstrap\.sh && ", "replace", "",
         "bootstrap.sh installs packages from PyPI; the sandbox's .venv is this test's virtualenv"),
    Rule(r"(scripts/train\.py|keras-mixer train)\b", "append", TINY_TRAIN,
         "a real run trains for minutes; 2 steps of 1 block exercise the same path"),
    Rule(r"(scripts/benchmark\.py|keras-mixer benchmark)\b(?!.*--help)", "append", TINY_BENCHMARK,
         "B/16 (or L/16) on all three backends takes minutes; a tiny Mixer, TensorFlow only"),
    Rule(r"^keras-mixer serve\b", "append", "--grpc-port 0 --rest-port 0",
         "runs until Ctrl-C: any free ports (8500/8501 may be taken on a shared machine)"),
    Rule(r"^keras-mixer serve\b", "background", "",
         "started in the background, stopped (SIGTERM, i.e. Ctrl-C) after the page's last block"),
    Rule(r"(scripts/predict\.py|keras-mixer predict)\b(?!.*--server)(?!.*--protocol rest)", "append",
         "--server localhost:{grpc}", "its default server is localhost:8500: the served port"),
    Rule(r"(scripts/predict\.py|keras-mixer predict)\b(?!.*--server)(?=.*--protocol rest)", "append",
         "--server localhost:{rest}", "its default REST server is localhost:8501: the served port"),
    Rule(r"localhost:8500\b", "replace", "localhost:{grpc}", "the served gRPC port"),
    Rule(r"localhost:8501\b", "replace", "localhost:{rest}", "the served REST port"),
)
PYTHON_RULES = [rule for rule in SUBSTITUTIONS if rule.action == "replace" and "localhost" in rule.pattern]


Block = collections.namedtuple("Block", "page line lang lines marker marker_line")


def pages():
    """README.md and every Markdown page of the docs site, as paths relative to the root."""
    found = sorted(os.path.relpath(path, ROOT)
                   for path in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    return [README] + found


def read_page(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read().splitlines()


def parse_blocks(lines, page=README):
    """The fenced blocks: ``Block(page, line, lang, [(line, text)], marker, marker_line)`` (1-based)."""
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i].strip()) if lines[i].startswith("```") else None
        if not match:
            i += 1
            continue
        start, lang, body = i + 1, match.group(1).lower(), []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append((i + 1, lines[i]))
            i += 1
        assert i < len(lines), f"{page}:{start}: code block never closed"
        marker, marker_line = None, None
        before = start - 2  # index of the line just before the fence
        if before >= 0 and not lines[before].strip() and before >= 1:
            before -= 1
        if before >= 0 and MARKER.match(lines[before]):
            marker, marker_line = MARKER.match(lines[before]).group(1), before + 1
        blocks.append(Block(page, start, lang, body, marker, marker_line))
        i += 1
    return blocks


def all_blocks():
    return [block for page in pages() for block in parse_blocks(read_page(page), page)]


def parse_marker(marker):
    """``(kind, arguments)``; raises ``ValueError`` saying what is wrong."""
    words = marker.split()
    kind, args = (words[0], words[1:]) if words else ("", [])
    if kind not in KINDS:
        raise ValueError(f"unknown marker {marker!r}: the kinds are {', '.join(KINDS)}")
    if kind == "run" and args and (args[0] != "needs" or len(args) != 2):
        raise ValueError(f"{marker!r}: 'run' takes nothing or 'needs PATH'")
    if kind == "skip" and (len(args) != 1 or args[0] not in SKIP_REASONS):
        raise ValueError(f"{marker!r}: 'skip' takes one reason of {', '.join(SKIP_REASONS)}")
    if kind == "covered-by" and len(args) != 1:
        raise ValueError(f"{marker!r}: 'covered-by' takes one file or tests/FILE.py::test_name")
    if kind == "layout" and args:
        raise ValueError(f"{marker!r}: 'layout' takes nothing")
    return kind, args


def kind_of(block):
    return parse_marker(block.marker)[0] if block.marker else None


def strip_comment(line):
    """``line`` without its shell comment (a ``#`` at the start or after a blank, outside quotes)."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(block):
    """``[(line, command)]``: continuations joined, comments and blank lines dropped."""
    commands, pending, first = [], "", None
    for number, text in block.lines:
        first = first or number
        text = text.lstrip() if pending else text  # a continued line's indent only separates words
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1].rstrip() + " "
            continue
        command = strip_comment(pending + text).strip()
        if command:
            commands.append((first, command))
        pending, first = "", None
    assert not pending, f"{block.page}:{block.line}: a continuation line ends the block"
    return commands


def substitute(command, ports, rules=SUBSTITUTIONS):
    """``(command with the table's substitutions, whether it runs in the background)``."""
    background = False
    for rule in rules:
        if not re.search(rule.pattern, command):
            continue
        if rule.action == "replace":
            command = re.sub(rule.pattern, rule.text, command)
        elif rule.action == "append":
            command = f"{command} {rule.text}"
        else:
            background = True
    for key, port in ports.items():
        command = command.replace("{%s}" % key, str(port))
    return command, background


def layout_paths(block):
    """The paths a file-tree block names: entries at two spaces per level, and further
    ``name.py`` entries separated by two or more spaces on the same line."""
    paths, parents = [], []
    entry = re.compile(r"^( *)([A-Za-z_][\w.-]*(?:/|\.\w+))(?=\s{2,}|\s*$)")
    extra = re.compile(r"(?<=\s\s)([A-Za-z_][\w-]*\.py)(?=\s{2,}|\s*$)")
    for number, text in block.lines:
        match = entry.match(text)
        if not match or len(match.group(1)) % 2 or len(match.group(1)) // 2 > len(parents):
            continue  # a description's continuation line
        depth = len(match.group(1)) // 2
        del parents[depth:]
        parent = "".join(parents)
        paths.append((number, parent + match.group(2)))
        paths += [(number, parent + name) for name in extra.findall(text[match.end():])]
        if match.group(2).endswith("/"):
            parents.append(match.group(2))
    return paths


def run_commands(page):
    """Every command that ``page``'s `run` blocks run (bash commands; Python blocks whole)."""
    commands = set()
    for block in parse_blocks(read_page(page), page):
        if kind_of(block) == "run":
            if block.lang == "python":
                commands.add("\n".join(text for _, text in block.lines))
            else:
                commands.update(command for _, command in shell_commands(block))
    return commands


# ---------------------------------------------------------------------------------- fast checks

def test_every_block_has_a_known_marker():
    blocks = all_blocks()
    assert len(blocks) >= 40, "the pages lost their code blocks?"
    problems = []
    for block in blocks:
        where = f"{block.page}:{block.line}"
        if block.marker is None:
            problems.append(f"{where}: ```{block.lang} block without a marker "
                            "(<!-- docs: run|skip REASON|covered-by TARGET|layout --> before it)")
            continue
        try:
            kind, _ = parse_marker(block.marker)
        except ValueError as error:
            problems.append(f"{block.page}:{block.marker_line}: {error}")
            continue
        if kind == "run" and block.lang not in (*BASH_LANGS, "python"):
            problems.append(f"{where}: cannot run a ```{block.lang} block")
    for page in pages():
        attached = {block.marker_line for block in blocks if block.page == page}
        problems += [f"{page}:{number}: docs marker not attached to a code block"
                     for number, text in enumerate(read_page(page), 1)
                     if MARKER.match(text) and number not in attached]
    assert not problems, "\n".join(problems)


def test_covered_by_targets_exist_and_pages_run_the_same_commands():
    problems = []
    for block in all_blocks():
        if kind_of(block) != "covered-by":
            continue
        target = parse_marker(block.marker)[1][0]
        path, _, function = target.partition("::")
        full = os.path.join(ROOT, path)
        where = f"{block.page}:{block.marker_line}"
        if not os.path.isfile(full):
            problems.append(f"{where}: {path} does not exist")
        elif function and not re.search(rf"^def {re.escape(function)}\(",
                                        open(full, encoding="utf-8").read(), re.M):
            problems.append(f"{where}: {path} has no {function}()")
        elif path.endswith(".md"):  # another page runs these very commands
            ran = run_commands(path)
            commands = ([("\n".join(text for _, text in block.lines))] if block.lang == "python"
                        else [command for _, command in shell_commands(block)])
            problems += [f"{where}: {path} runs no {command!r}" for command in commands
                         if command not in ran]
    assert not problems, "\n".join(problems)


def test_layouts_name_existing_paths():
    layouts = [block for block in all_blocks() if kind_of(block) == "layout"]
    assert layouts, "no <!-- docs: layout --> block"
    checked = [(block.page, number, path) for block in layouts for number, path in layout_paths(block)]
    assert len(checked) >= 10, checked
    missing = [f"{page}:{number}: {path}" for page, number, path in checked
               if not os.path.exists(os.path.join(ROOT, path))]
    assert not missing, "a repository layout names paths that do not exist:\n" + "\n".join(missing)


def prose(lines):
    """``(line, text)`` outside code blocks, inline code spans removed."""
    inside = False
    for number, text in enumerate(lines, 1):
        if FENCE.match(text.strip()) and text.startswith("```"):  # an opening or a closing fence
            inside = not inside
            continue
        if not inside:
            yield number, re.sub(r"`[^`]*`", "", text)


def test_no_placeholders():
    found = []
    for page in pages():
        lines = read_page(page)
        found += [f"{page}:{number}: {word!r}" for number, text in enumerate(lines, 1)
                  for word in re.findall(r"\b(?:TODO|XXX|FIXME|TBD)\b", text)]
        # Prose words like SUITE_MINUTES (environment variables belong in `code spans`).
        found += [f"{page}:{number}: {word!r}" for number, text in prose(lines)
                  for word in re.findall(r"\b[A-Z]{2,}(?:_[A-Z]{2,})+\b", text)]
    assert not found, "placeholders left in the docs:\n" + "\n".join(found)


def test_headings_follow_a_blank_line():
    glued = []
    for page in pages():
        lines = read_page(page)
        glued += [f"{page}:{number}: {text!r} follows {lines[number - 2]!r}"
                  for number, text in prose(lines)
                  if number > 1 and re.match(r"#{1,6}\s", text) and lines[number - 2].strip()]
    assert not glued, "headings need a blank line before them:\n" + "\n".join(glued)


def test_readme_is_short_and_keeps_the_quick_start():
    lines = read_page(README)
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines (< {README_MAX_LINES})"
    commands = run_commands(README) | {command for block in parse_blocks(lines)
                                       for _, command in shell_commands(block)
                                       if block.lang in BASH_LANGS and kind_of(block) != "layout"}
    # The two Quick start commands, exactly: CI (.ci/run) runs the second one.
    assert "bash scripts/bootstrap.sh && .venv/bin/python scripts/train.py" in commands
    assert "bash scripts/bootstrap.sh && bash scripts/test.sh" in commands
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert "bash scripts/bootstrap.sh && bash scripts/test.sh" in f.read()


def test_license_is_the_one_the_package_declares():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    with open(os.path.join(ROOT, "setup.cfg"), encoding="utf-8") as f:
        assert re.search(r"^license = Apache-2\.0$", f.read(), re.M)


def test_shipped_examples_are_the_generators(tmp_path):
    """examples/images/ and examples/labels.txt are what examples/make_photos.py draws."""
    from PIL import Image

    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "make_photos.py"),
                             "--samples", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shipped = os.path.join(ROOT, "examples")
    made = sorted(os.listdir(tmp_path / "images"))
    assert made == sorted(os.listdir(os.path.join(shipped, "images")))
    for name in made:
        new = np.asarray(Image.open(tmp_path / "images" / name), np.float64)
        old = np.asarray(Image.open(os.path.join(shipped, "images", name)), np.float64)
        assert new.shape == old.shape and np.abs(new - old).mean() < 2.0, name  # JPEG codecs differ
    assert (tmp_path / "labels.txt").read_text() == open(os.path.join(shipped, "labels.txt")).read()


def test_substitutions():
    ports = {"grpc": 1234, "rest": 5678}
    assert substitute("bash scripts/bootstrap.sh && .venv/bin/python scripts/train.py", ports) == (
        f".venv/bin/python scripts/train.py {TINY_TRAIN}", False)
    assert substitute("keras-mixer serve saved_models/", ports) == (
        "keras-mixer serve saved_models/ --grpc-port 0 --rest-port 0", True)
    assert substitute("keras-mixer predict digit.png", ports)[0] == (
        "keras-mixer predict digit.png --server localhost:1234")
    assert substitute("python scripts/predict.py a.jpg --protocol rest --server localhost:8501",
                      ports)[0] == "python scripts/predict.py a.jpg --protocol rest --server localhost:5678"
    assert substitute("python scripts/benchmark.py --help", ports)[0] == "python scripts/benchmark.py --help"
    assert substitute("keras-mixer benchmark --quick", ports)[0] == f"keras-mixer benchmark --quick {TINY_BENCHMARK}"
    assert strip_comment('a "b # c" # d') == 'a "b # c"'
    assert strip_comment("pip install x   # needs pip install \".[onnx]\"") == "pip install x"


# ------------------------------------------------------------------------------- the docs site

ONCE = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                          reason="runs once, on the TensorFlow backend (a fresh clone's default)")


@ONCE
def test_site_builds_without_warnings(tmp_path):
    """`mkdocs build --strict`: a broken link, a page missing from the nav or a docstring that
    the API reference cannot render is an error (the `docs` extra installs the tools)."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (scripts/bootstrap.sh does)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert os.path.isfile(tmp_path / "site" / "guides" / "own-data" / "index.html")
    assert os.path.isfile(tmp_path / "site" / "api" / "models" / "index.html")


# ------------------------------------------------------------------------------ running the pages

# Runs a page's Python blocks one after the other in one interpreter (one TensorFlow start-up
# for all of them), each as a fresh __main__ module: a block sees nothing another one defined.
PYTHON_WORKER = """
import runpy, sys, traceback
for path in sys.stdin:
    status = 0
    try:
        runpy.run_path(path.strip(), run_name="__main__")
    except SystemExit as error:
        status = 0 if error.code in (None, 0) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stderr.flush()
    print("\\0block-done", status, flush=True)
"""


class Background:
    """A process whose merged stdout and stderr a thread collects (``lines``; ``next_line()``)."""

    def __init__(self, args, **popen_kwargs):
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.PIPE, text=True, **popen_kwargs)
        self.lines, self._queue = [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for text in self.process.stdout:
            self.lines.append(text)
            self._queue.put(text)
        self._queue.put(None)

    def next_line(self, deadline):
        """The next line, or ``None`` when the process ended or ``deadline`` passed."""
        while time.monotonic() < deadline:
            try:
                return self._queue.get(timeout=1)
            except queue.Empty:
                continue
        return None

    def tail(self, count=40):
        return "".join(self.lines[-count:])

    def stop(self):
        """SIGTERM (``keras-mixer serve`` takes it as Ctrl-C); the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Sandbox:
    """A directory that looks like a fresh clone of the repository to one page's commands."""

    def __init__(self, page, root, scratch):
        self.page, self.root, self.scratch = page, str(root), str(scratch)
        for name in CLONE:
            os.symlink(os.path.join(ROOT, name), os.path.join(self.root, name))
        os.symlink(sys.prefix, os.path.join(self.root, ".venv"))  # what bootstrap.sh creates
        bin_dir = os.path.join(sys.prefix, "bin")
        self.env = worker_env("tensorflow", KERAS_HOME=os.path.join(self.scratch, "keras_home"),
                              PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
        self.env.pop("VIRTUAL_ENV", None)
        self.ports, self.server, self.python, self.log = {}, None, None, []

    def fail(self, line, command, ran, status, output):
        server = f"\n--- server output (tail):\n{self.server.tail(20)}" if self.server else ""
        pytest.fail(f"{self.page}:{line}: {command}\nran: {ran}\nexit status {status}\n"
                    f"--- output (tail):\n{output[-4000:]}{server}", pytrace=False)

    def run_shell(self, line, command):
        ran, background = substitute(command, self.ports)
        if background:
            return self.start_server(line, command, ran)
        start = time.monotonic()
        result = subprocess.run(["bash", "-c", ran], cwd=self.root, env=self.env,
                                capture_output=True, text=True, timeout=600)
        self.log.append((line, ran, time.monotonic() - start))
        output = result.stdout + result.stderr
        if result.returncode != 0:
            self.fail(line, command, ran, result.returncode, output)
        if NOTHING_DONE in output:
            self.fail(line, command, ran, f"0, but it said {NOTHING_DONE!r}", output)
        if ran.startswith("curl "):  # curl -s exits with 0 on an HTTP error: read the answer
            try:
                answer = json.loads(result.stdout)
            except ValueError:
                answer = {"error": "not JSON"}
            if "error" in answer:
                self.fail(line, command, ran, "0, but the answer is an error", output)

    def run_python(self, line, code, timeout=600):
        ran, _ = substitute(code, self.ports, PYTHON_RULES)
        path = os.path.join(self.scratch, f"block_line_{line}.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(ran)
        if self.python is None:
            self.python = Background([shutil.which("python", path=self.env["PATH"]), "-c", PYTHON_WORKER],
                                     cwd=self.root, env=self.env)
        start, first = time.monotonic(), len(self.python.lines)
        self.python.process.stdin.write(path + "\n")
        self.python.process.stdin.flush()
        deadline, status = start + timeout, None
        while status is None:
            text = self.python.next_line(deadline)
            if text is None:
                self.fail(line, "the Python block", ran, "none (it ended or timed out)", self.python.tail())
            if text.startswith("\0block-done"):
                status = int(text.split()[1])
        self.log.append((line, "the Python block", time.monotonic() - start))
        if status != 0:
            self.fail(line, "the Python block", ran, status, "".join(self.python.lines[first:]))

    def start_server(self, line, command, ran, timeout=240):
        """Start ``ran`` in the background; the ports it prints (``gRPC: host:port``, ``REST: ...``)."""
        assert self.server is None, f"{self.page}:{line}: a second server"
        start = time.monotonic()
        self.server = Background(["bash", "-c", "exec " + ran], cwd=self.root, env=self.env)
        while len(self.ports) < 2:
            text = self.server.next_line(start + timeout)
            if text is None:
                self.fail(line, command, ran, self.server.process.poll(), self.server.tail())
            for key, prefix in (("grpc", "gRPC: "), ("rest", "REST: ")):
                if text.startswith(prefix):
                    self.ports[key] = int(re.search(r":(\d+)(?:/|\s*$)", text).group(1))
        self.log.append((line, ran + " &", time.monotonic() - start))

    def run_block(self, block):
        if block.lang == "python":
            self.run_python(block.line, "\n".join(text for _, text in block.lines))
            return
        for line, command in shell_commands(block):
            self.run_shell(line, command)


def runnable_pages():
    return [page for page in pages()
            if any(kind_of(block) == "run" for block in parse_blocks(read_page(page), page))]


@ONCE
@pytest.mark.skipif(sys.prefix == sys.base_prefix,
                    reason="the pages' commands use .venv: run the suite from a virtualenv")
@pytest.mark.parametrize("page", runnable_pages())
def test_page_runs(page, tmp_path):
    """Every `run` block of ``page``, in order, in a fresh clone-like directory, with SUBSTITUTIONS."""
    runnable = [(block, parse_marker(block.marker)[1][1] if parse_marker(block.marker)[1] else None)
                for block in parse_blocks(read_page(page), page) if kind_of(block) == "run"]
    root, scratch = tmp_path / "repo", tmp_path / "scratch"
    root.mkdir()
    scratch.mkdir()
    sandbox = Sandbox(page, root, scratch)
    pending, started, server_status = [], time.monotonic(), None
    try:
        for block, needs in runnable:
            pending.append((block, needs))
            progress = True
            while progress:  # each block runs as soon as what it needs exists
                progress = False
                for item in list(pending):
                    if item[1] is None or os.path.exists(os.path.join(sandbox.root, item[1])):
                        pending.remove(item)
                        sandbox.run_block(item[0])
                        progress = True
                        break
    finally:
        if sandbox.python is not None:
            sandbox.python.process.stdin.close()
            sandbox.python.stop()
        if sandbox.server is not None:
            server_status = sandbox.server.stop()
        for number, ran, seconds in sandbox.log:
            print(f"{seconds:6.1f} s  {page}:{number}: {ran}")
        print(f"{time.monotonic() - started:6.1f} s  in all")
        shutil.rmtree(os.path.join(sandbox.root, "saved_models"), ignore_errors=True)
    assert not pending, "\n".join(f"{page}:{block.line}: needs {needs}, which no block wrote"
                                  for block, needs in pending)
    assert server_status in (None, 0), f"the server did not stop cleanly:\n{sandbox.server.tail(20)}"
