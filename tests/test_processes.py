"""Commands with worker processes end, every time: forked children never run the CLI's SIGTERM handler."""

import os
import signal
import subprocess
import sys

import pytest

from convert import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 90  # a run takes about 4 s here; a hung run never ends


def _forked_child_sigterm():
    """The SIGTERM disposition a child forked by this process starts with."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, b"default" if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else b"inherited")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return answer


def test_a_child_forked_during_a_command_has_the_default_sigterm():
    seen = {}

    def command(args):
        seen["parent"] = signal.getsignal(signal.SIGTERM)
        seen["child"] = _forked_child_sigterm()
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert common.run_cli("test", command, type("Args", (), {"quiet": True})()) == 0
    assert seen == {"parent": common._terminate, "child": "default"}
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_is_blocked_only_across_a_fork_and_a_signal_sent_meanwhile_ends_the_child():
    blocked = {}

    def command(args):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            held = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
            os.write(write, b"blocked" if held else b"unblocked")
            os._exit(0)
        os.close(write)
        blocked["child"] = os.read(read, 64).decode()
        os.close(read)
        os.waitpid(pid, 0)
        blocked["parent"] = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        # The race itself, replayed in a child: a SIGTERM that arrives after the fork but before the hook
        # has reset the parent's handler must end the child, not be swallowed.
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.signal(signal.SIGTERM, common._terminate)  # the handler a child starts with
            common._hold_sigterm_for_fork()  # as the before-fork hook leaves the forking thread
            os.kill(os.getpid(), signal.SIGTERM)  # arrives now
            common._default_sigterm_in_child()  # the after-fork hook: the default, then the signal ends it
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        blocked["child_ended_by"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return 0

    assert common.run_cli("test", command, type("Args", (), {"quiet": True})()) == 0
    assert blocked == {"child": "unblocked", "parent": False, "child_ended_by": signal.SIGTERM}
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_a_pool_worker_of_datasets_has_the_default_sigterm():
    # datasets' num_proc pool is multiprocess (dill), forked like ours: its workers must die on terminate().
    import multiprocess

    def command(args):
        with multiprocess.get_context("fork").Pool(2) as pool:
            return sorted(pool.map(lambda _: signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, range(4)))

    assert common.run_cli("test", command, type("Args", (), {"quiet": True})()) == [True, True, True, True]


@pytest.fixture(scope="module")
def small_fold(tmp_path_factory):
    from convert.sample import write_fold

    root = tmp_path_factory.mktemp("hang")
    write_fold(str(root), 1, 24, "kaggle")
    return str(root)


def _run(arguments, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    try:
        return subprocess.run(
            [sys.executable, "-m", "convert", *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: python -m convert {' '.join(arguments)} did not end within {RUN_TIMEOUT} s")


# Before the fix, 1 run in 8 of `export --num-proc 2` on this 24-patch fold hung in Pool.terminate().
@pytest.mark.parametrize("command", ["export"] * 5 + ["push"] * 2 + ["evaluate"] * 2)
def test_commands_with_two_processes_always_end(command, small_fold, tmp_path):
    cache = str(tmp_path / "cache")  # a fresh cache: the builder's pool runs every time
    if command == "export":
        arguments = ["export", "--data-dir", small_fold, "--out", str(tmp_path / "out")]
        made = tmp_path / "out" / "export.json"
    elif command == "push":
        arguments = ["push", "--repo-id", "lab/pannuke", "--data-dir", small_fold, "--local-dir", str(tmp_path / "r")]
        made = tmp_path / "r" / "README.md"
    else:  # the truth scored against itself
        pred = os.path.join(small_fold, "Part 1", "Masks", "masks.npy")
        arguments = ["evaluate", "--data-dir", small_fold, "--config", "folds", "--split", "fold1", "--pred", pred]
        arguments += ["--json", str(tmp_path / "scores.json")]
        made = tmp_path / "scores.json"
    result = _run([*arguments, "--num-proc", "2", "--cache-dir", cache, "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert made.is_file()
