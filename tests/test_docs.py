"""README.md cannot drift: every fenced block carries a docs marker, and the offline ones run.

A marker is an HTML comment on the line just before the fence (or before one blank
line before it):

  <!-- docs: run -->               run by test_readme_commands_run, in README order, in a
                                   sandbox that looks like the repository root
  <!-- docs: run needs PATH -->    the same, as soon as PATH exists in the sandbox (the intro
                                   snippet loads the model that the Quick start trains)
  <!-- docs: skip REASON -->       not run here; REASON is one of SKIP_REASONS: network (a
                                   download: PyPI, presets, published checkpoints, datasets),
                                   docker, gpu, tpu, cluster (several hosts)
  <!-- docs: covered-by TARGET --> run elsewhere: TARGET is a file of this repository, or
                                   tests/FILE.py::test_function
  <!-- docs: layout -->            a file tree, not commands: every path it names must exist

Bash blocks (```bash, and plain ``` ones) run command by command (backslash continuations
joined, `# ...` comments dropped), each with `bash -c`. Python blocks run one after the other
in one `python` process (one TensorFlow start-up), each as a fresh `__main__` module, so a
block that uses a name it does not define fails as it would in a new interpreter. `python`,
`keras-mixer` and `.venv/` are this virtualenv's, importing this checkout's package; the files
the commands read (photos/, digit.png, cat.jpg, batch.npy, labels.txt, ...) are made from
scikit-learn's bundled digits by make_fixtures. The commands get tiny settings from
SUBSTITUTIONS, the only changes made to what the README says. Every command must exit with
status 0 (and a `curl` must not answer an error).
"""

import collections
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

README = os.path.join(ROOT, "README.md")
KINDS = ("run", "skip", "covered-by", "layout")
SKIP_REASONS = ("network", "docker", "gpu", "tpu", "cluster")
MARKER = re.compile(r"^<!--\s*docs:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
BASH_LANGS = ("bash", "sh", "shell", "")

TINY_TRAIN = "--epochs 1 --steps-per-epoch 3 --num-blocks 1"
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
    Rule(r"--variant B/16 --weights b16\.weights\.h5", "replace",
         "--variant S/32 --image-size 32 --weights b16.weights.h5",
         "B/16 at 224 px is 60M parameters (30 s, 460 MB written): the sandbox's b16.weights.h5 "
         "holds S/32 weights at 32 px"),
    Rule(r"(scripts/train\.py|keras-mixer train)\b", "append", TINY_TRAIN,
         "the main job trains 25 epochs (minutes); 3 steps of 1 block exercise the same path"),
    Rule(r"(scripts/benchmark\.py|keras-mixer benchmark)\b(?!.*--help)", "append", TINY_BENCHMARK,
         "B/16 (or L/16) on all three backends takes minutes; a tiny Mixer, TensorFlow only"),
    Rule(r"^keras-mixer serve\b", "append", "--grpc-port 0 --rest-port 0",
         "runs until Ctrl-C: any free ports (8500/8501 may be taken on a shared machine)"),
    Rule(r"^keras-mixer serve\b", "background", "",
         "started in the background, stopped (SIGTERM, i.e. Ctrl-C) after the last block"),
    Rule(r"(scripts/predict\.py|keras-mixer predict)\b(?!.*--server)(?!.*--protocol rest)", "append",
         "--server localhost:{grpc}", "its default server is localhost:8500: the served port"),
    Rule(r"(scripts/predict\.py|keras-mixer predict)\b(?!.*--server)(?=.*--protocol rest)", "append",
         "--server localhost:{rest}", "its default REST server is localhost:8501: the served port"),
    Rule(r"localhost:8500\b", "replace", "localhost:{grpc}", "the served gRPC port"),
    Rule(r"localhost:8501\b", "replace", "localhost:{rest}", "the served REST port"),
)
PYTHON_RULES = [rule for rule in SUBSTITUTIONS if rule.action == "replace" and "localhost" in rule.pattern]


Block = collections.namedtuple("Block", "line lang lines marker marker_line")


def read_readme():
    with open(README, encoding="utf-8") as f:
        return f.read().splitlines()


def parse_blocks(lines):
    """The fenced blocks: ``Block(line, lang, [(line, text)], marker, marker_line)`` (lines 1-based)."""
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang, body = i + 1, match.group(1).lower(), []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append((i + 1, lines[i]))
            i += 1
        assert i < len(lines), f"README.md:{start}: code block never closed"
        marker, marker_line = None, None
        before = start - 2  # index of the line just before the fence
        if before >= 0 and not lines[before].strip() and before >= 1:
            before -= 1
        if before >= 0 and MARKER.match(lines[before]):
            marker, marker_line = MARKER.match(lines[before]).group(1), before + 1
        blocks.append(Block(start, lang, body, marker, marker_line))
        i += 1
    return blocks


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
    assert not pending, f"README.md:{block.line}: a continuation line ends the block"
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


# ---------------------------------------------------------------------------------- fast checks

def test_every_block_has_a_known_marker():
    lines = read_readme()
    blocks = parse_blocks(lines)
    assert len(blocks) >= 10, "README.md lost its code blocks?"
    problems = []
    for block in blocks:
        if block.marker is None:
            problems.append(f"README.md:{block.line}: ```{block.lang} block without a marker "
                            "(<!-- docs: run|skip REASON|covered-by TARGET|layout --> before it)")
            continue
        try:
            kind, args = parse_marker(block.marker)
        except ValueError as error:
            problems.append(f"README.md:{block.marker_line}: {error}")
            continue
        if kind == "run" and block.lang not in (*BASH_LANGS, "python"):
            problems.append(f"README.md:{block.line}: cannot run a ```{block.lang} block")
    attached = {block.marker_line for block in blocks}
    problems += [f"README.md:{number}: docs marker not attached to a code block"
                 for number, text in enumerate(lines, 1) if MARKER.match(text) and number not in attached]
    assert not problems, "\n".join(problems)


def test_covered_by_targets_exist():
    problems = []
    for block in parse_blocks(read_readme()):
        if block.marker is None or parse_marker(block.marker)[0] != "covered-by":
            continue
        target = parse_marker(block.marker)[1][0]
        path, _, function = target.partition("::")
        full = os.path.join(ROOT, path)
        if not os.path.isfile(full):
            problems.append(f"README.md:{block.marker_line}: {path} does not exist")
        elif function and not re.search(rf"^def {re.escape(function)}\(",
                                        open(full, encoding="utf-8").read(), re.M):
            problems.append(f"README.md:{block.marker_line}: {path} has no {function}()")
    assert not problems, "\n".join(problems)


def test_layout_names_existing_paths():
    layouts = [block for block in parse_blocks(read_readme())
               if block.marker and parse_marker(block.marker)[0] == "layout"]
    assert layouts, "no <!-- docs: layout --> block"
    checked = [(number, path) for block in layouts for number, path in layout_paths(block)]
    assert len(checked) >= 10, checked
    missing = [f"README.md:{number}: {path}" for number, path in checked
               if not os.path.exists(os.path.join(ROOT, path))]
    assert not missing, "the repository layout names paths that do not exist:\n" + "\n".join(missing)


def prose(lines):
    """``(line, text)`` outside code blocks, inline code spans removed."""
    inside = False
    for number, text in enumerate(lines, 1):
        if FENCE.match(text):  # an opening or a closing fence
            inside = not inside
            continue
        if not inside:
            yield number, re.sub(r"`[^`]*`", "", text)


def test_no_placeholders():
    lines = read_readme()
    found = [f"README.md:{number}: {word!r}" for number, text in enumerate(lines, 1)
             for word in re.findall(r"\b(?:TODO|XXX|FIXME|TBD)\b", text)]
    found += [f"README.md:{number}: {text.strip()!r} alone on a line"
              for number, text in enumerate(lines, 1)
              if re.fullmatch(r"\s*[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\W*", text)]
    # Prose words like SUITE_MINUTES (environment variables belong in `code spans`).
    found += [f"README.md:{number}: {word!r}" for number, text in prose(lines)
              for word in re.findall(r"\b[A-Z]{2,}(?:_[A-Z]{2,})+\b", text)]
    assert not found, "placeholders left in README.md:\n" + "\n".join(found)


def test_headings_follow_a_blank_line():
    lines = read_readme()
    glued = [f"README.md:{number}: {text!r} follows {lines[number - 2]!r}"
             for number, text in prose(lines)
             if number > 1 and re.match(r"#{1,6}\s", text) and lines[number - 2].strip()]
    assert not glued, "headings need a blank line before them:\n" + "\n".join(glued)


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


# ------------------------------------------------------------------------------ running the README

def make_fixtures(root):
    """What the README's commands expect to find, from scikit-learn's bundled digits."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype("uint8")
    pixels = np.repeat(np.repeat(np.repeat(pixels[..., None], 3, -1), 4, 1), 4, 2)  # (n, 32, 32, 3)

    def write(path, index):
        path = os.path.join(root, path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        encode = tf.io.encode_png if path.endswith(".png") else tf.io.encode_jpeg
        tf.io.write_file(path, encode(pixels[index]))

    for index in range(60):  # the last images of the digits: the main job's test split has them too
        index = len(pixels) - 1 - index
        label = digits.target[index]
        if index % 3 == 0:
            write(f"photos/{label}/{index}.jpg", index)
        elif index % 3 == 1:
            write(f"path/to/train_images/{index}.png", index)
        else:
            write(f"path/to/heldout_images/{label}/{index}.jpg", index)
    for name, index in (("digit.png", 0), ("cat.jpg", 1), ("dog.png", 2), ("dog.jpg", 3)):
        write(name, index)
    np.save(os.path.join(root, "batch.npy"), pixels[:4])
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.write("".join(f"{digit}\n" for digit in digits.target_names))

    import keras_mixer  # a local weights file (S/32 at 32 px, see SUBSTITUTIONS)

    keras_mixer.MixerS32(input_shape=(32, 32, 3)).save_weights(os.path.join(root, "b16.weights.h5"))
    keras.utils.clear_session()


# Runs the README's Python blocks one after the other in one interpreter (one TensorFlow start-up
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
    """A directory that looks like the repository root to the README's commands."""

    def __init__(self, root, scratch):
        self.root, self.scratch = str(root), str(scratch)
        for name in ("scripts", "serving"):
            os.symlink(os.path.join(ROOT, name), os.path.join(self.root, name))
        os.symlink(sys.prefix, os.path.join(self.root, ".venv"))  # what bootstrap.sh creates
        bin_dir = os.path.join(sys.prefix, "bin")
        self.env = worker_env("tensorflow", KERAS_HOME=os.path.join(self.scratch, "keras_home"),
                              PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
        self.env.pop("VIRTUAL_ENV", None)
        self.ports, self.server, self.python, self.log = {}, None, None, []

    def fail(self, line, command, ran, status, output):
        server = f"\n--- server output (tail):\n{self.server.tail(20)}" if self.server else ""
        pytest.fail(f"README.md:{line}: {command}\nran: {ran}\nexit status {status}\n"
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
        if ran.startswith("curl "):  # curl -s exits with 0 on an HTTP error: read the answer
            try:
                answer = json.loads(result.stdout)
            except ValueError:
                answer = {"error": "not JSON"}
            if "error" in answer:
                self.fail(line, command, ran, "0, but the answer is an error", output)

    def run_python(self, line, code, timeout=600):
        ran, _ = substitute(code, self.ports, PYTHON_RULES)
        path = os.path.join(self.scratch, f"README_line_{line}.py")
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
        assert self.server is None, f"README.md:{line}: a second server"
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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the README runs once, on the TensorFlow backend (a fresh clone's "
                           "default); its markers are checked on every backend")
@pytest.mark.skipif(sys.prefix == sys.base_prefix,
                    reason="the README's commands use .venv: run the suite from a virtualenv")
def test_readme_commands_run(tmp_path):
    """Every `run` block, in README order, in a sandbox repository root, with SUBSTITUTIONS."""
    runnable = []
    for block in parse_blocks(read_readme()):
        kind, args = parse_marker(block.marker or "missing")  # test_every_block_... says why
        if kind == "run":
            runnable.append((block, args[1] if args else None))
    root, scratch = tmp_path / "repo", tmp_path / "scratch"
    root.mkdir()
    scratch.mkdir()
    make_fixtures(str(root))
    sandbox = Sandbox(root, scratch)
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
            print(f"{seconds:6.1f} s  README.md:{number}: {ran}")
        print(f"{time.monotonic() - started:6.1f} s  in all")
        shutil.rmtree(os.path.join(sandbox.root, "saved_models"), ignore_errors=True)  # 150 MB
        os.remove(os.path.join(sandbox.root, "b16.weights.h5"))
    assert not pending, "\n".join(f"README.md:{block.line}: needs {needs}, which no block wrote"
                                  for block, needs in pending)
    assert server_status in (None, 0), f"the server did not stop cleanly:\n{sandbox.server.tail(20)}"
